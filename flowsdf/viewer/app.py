"""The viewer's page: a Gradio Blocks app over a loaded `Viewer` (no hand-written front end).

Two tabs: "Step the flow" and "Reconstruct". Every handler runs through `_shown`: an expected
refusal (a FlowSDFError: bad picture, seed out of range ...) becomes a message in the page and one
line in the server log; running out of memory becomes a message saying what to lower; anything
else is a message naming the error, with its traceback in the server log - never an empty message.
The Reconstruct tab clears the previous result before each request, so a refused request never
leaves another picture's result (or its download buttons) on the page. One computation runs at a
time (one shared concurrency group) and at most `QUEUE_SIZE` requests wait, so a burst of requests
cannot exhaust the machine. No event is offered to Gradio's client API (api_visibility "private").

Serving (`serve`): only what the page uses, bounded, and cleaned up on any exit. The Gradio app is
mounted on a small FastAPI app of our own and run by uvicorn in this process (not through
`Blocks.launch`), so that:

- `Guard` (ASGI middleware) answers 404 to every route the page does not use (Gradio's REST and
  client API `/gradio_api/call|run|api/...`, its proxy, MCP, monitoring, run history, streaming,
  login, the OpenAPI schema ...) before Gradio sees the request, and 429 to a client that uploads
  more than `Limits.uploads_per_minute` files a minute; Gradio itself refuses an upload over
  `Limits.max_upload_bytes` (413) before any handler runs.
- The listening socket is bound here, so a port in use is one clear error before serving.
- SIGTERM ends the server like Ctrl-C (uvicorn's graceful shutdown, then `Stopped`), so the
  caller's `finally` removes the private temporary folder that holds every upload and every
  served file (GRADIO_TEMP_DIR, set by `flowsdf.cli.view` before this module imports Gradio).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import html
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import defaultdict, deque

# Before gradio is imported: the viewer is a local tool and sends nothing anywhere.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402  (after the environment is set)
import torch  # noqa: E402

from flowsdf.errors import FlowSDFError  # noqa: E402
from flowsdf.viewer.backend import (  # noqa: E402
    GUIDANCE,
    MAX_PROMPT_CHARACTERS,
    MAX_SEED,
    SPLITS,
    YOURS,
    FlowPath,
    Viewer,
)

QUEUE_SIZE = 16
_PRIVATE = {"api_visibility": "private"}  # the page's events only; nothing for API clients
_RUN = {"concurrency_id": "model", "concurrency_limit": 1, **_PRIVATE}  # everything that runs a model
# No model, so no waiting behind one. (Queued all the same: unqueued events use Gradio's REST route
# /gradio_api/run/..., which `serve` does not serve.)
_QUICK = {"concurrency_id": "quick", "concurrency_limit": 4, **_PRIVATE}
GROUND_TRUTH = "Ground truth"
YOUR_PICTURE = "Your picture, as the model sees it"
BACKGROUND_3D = (0.92, 0.93, 0.95, 1.0)  # the 3-D view's background: light, so white and pale meshes read

STEP_INTRO = """\
The flow starts from noise (step 0) and takes {steps} Euler steps along its learned velocity to a
shape's code (step {steps}). **Latent**: the state on the plane of the training codes' two
principal axes ({source}), the path so far, and its norm against theirs. **Silhouette**: what the
SDF decoder makes of that state, seen from the picture's camera. **Ground truth**: the true
silhouette from that camera (your picture has none: it is shown as the model sees it, prepared).
**Noise scaling off** swaps in the flow distilled from unscaled noise (sigma = 1): its path starts
far outside the codes, which is the collapse noise scaling prevents."""

RECON_INTRO = """\
Upload a picture of one object on a plain background, or click an example. It is prepared like
the training renders (the object found, centred, scaled, put on black: the picture *as the model
sees it*), the flow draws K codes from K seeds, and the 3-D view shows the mean code's mesh coloured
by how much the K samples disagree (fixed scale in object units, colour bar below; dark = they
agree). Each sample is in the gallery; click one to turn it in 3-D and download it. A verdict above
the 3-D view says whether the picture is like what the model knows and the shape explains it."""


TEXT_INTRO = """\
Describe a shape in words the training captions use: a family (sphere, box, cylinder, cone, torus,
capsule, ellipsoid, octahedron), proportions (tall, flat, long, thin ...), size, colour, or two
parts ("a box with a round hole", "a sphere joined to a cone"). The text flow draws K codes from K
seeds; the 3-D view shows the mean code's mesh coloured by how much the samples disagree — they
differ where the words leave the shape open. Guidance W > 1 follows the words more closely."""


def _log(kind: str, message: str) -> None:
    print(f"flowsdf view: {time.strftime('%H:%M:%S')} {kind}: {message}", file=sys.stderr, flush=True)


def _shown(fn):
    """Run a handler; every failure becomes a message in the page (gr.Error), never an empty one.

    Expected refusals (FlowSDFError) are logged as one line; out-of-memory as one line saying so;
    anything else with its traceback, as a bug.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except FlowSDFError as e:
            _log("refused", str(e))
            raise gr.Error(html.escape(str(e)), duration=None, print_exception=False) from e
        except (torch.OutOfMemoryError, MemoryError) as e:
            _log("out of memory", f"{fn.__name__}: {type(e).__name__}")
            raise gr.Error("out of memory for this request: try fewer samples or a lower mesh resolution",
                           duration=None, print_exception=False) from e
        except Exception as e:
            _log("internal error", f"{fn.__name__}: {type(e).__name__}: {e}")
            traceback.print_exc()
            raise gr.Error(html.escape(f"internal error ({type(e).__name__}: {e}); the server log has the details"),
                           duration=None, print_exception=False) from e

    return wrapper


def build_app(viewer: Viewer) -> gr.Blocks:
    """The page for a loaded run."""
    with gr.Blocks(title=f"flowsdf viewer: {viewer.run_dir.name}", delete_cache=(600, 3600)) as app:
        gr.Markdown(f"### flowsdf viewer: `{viewer.run_dir}`\nFlow: {viewer.flow.cfg.flow.steps} Euler steps, "
                    f"noise scale sigma = {viewer.flow.sigma:.3f}, device {viewer.flow.device}. "
                    f"Uploads up to {viewer.limits.upload_limit_text}.")
        with gr.Tabs():
            with gr.Tab("Step the flow", id="step", elem_id="tab-step"):
                _step_tab(app, viewer)
            with gr.Tab("Reconstruct", id="reconstruct", elem_id="tab-reconstruct"):
                _reconstruct_tab(viewer)
            with gr.Tab("Text to 3-D", id="text", elem_id="tab-text"):
                _text_tab(viewer)
    return app.queue(max_size=QUEUE_SIZE)


def _step_tab(app: gr.Blocks, viewer: Viewer) -> None:
    steps = viewer.flow.cfg.flow.steps
    has_noscale = viewer.noscale is not None
    source = gr.State({"kind": "dataset", "split": "training", "index": 0})
    path_state = gr.State(None)
    with gr.Accordion("What the panes show", open=False):
        gr.Markdown(STEP_INTRO.format(steps=steps, source=viewer.frame.source))
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            split = gr.Radio([*SPLITS, YOURS], value="training", label="Picture", elem_id="split",
                             info=f"a dataset split, or {YOURS} after an upload")
            index = gr.Slider(0, viewer.split_size("training") - 1, value=0, step=1, label="Picture index",
                              elem_id="picture-index")
            scaling = gr.Checkbox(value=True, label="Noise scaling", interactive=has_noscale, elem_id="scaling",
                                  info="off: the flow distilled with sigma = 1" if has_noscale
                                  else "this run has no flow distilled without scaling")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed",
                                 min_width=80)
                new_sample = gr.Button("New sample", elem_id="new-sample", min_width=80)
            upload = gr.File(label="Upload your picture (PNG, JPEG, WebP)", type="filepath", height=110,
                             elem_id="step-upload")
        with gr.Column(scale=4):
            step = gr.Slider(0, steps, value=steps, step=1, label="Euler step", elem_id="step-slider")
            with gr.Row(equal_height=True):
                plot = gr.Image(label="Latent", type="numpy", format="png", interactive=False, height=250, scale=2,
                                buttons=[], elem_id="latent-plot")
                sil = gr.Image(label="Silhouette at this step", type="numpy", format="png", interactive=False,
                               height=250, scale=1, buttons=[], elem_id="silhouette")
                third = gr.Image(label=GROUND_TRUTH, type="numpy", format="png", interactive=False, height=250,
                                 scale=1, buttons=[], elem_id="ground-truth")
            caption = gr.Markdown(elem_id="step-caption")
    gallery = gr.Gallery(viewer.split_thumbnails("training"), label="Pick a picture of the split", columns=12,
                         height=120, object_fit="contain", allow_preview=False, elem_id="gallery")

    outputs = [path_state, source, plot, sil, third, caption]
    settings = [scaling, seed, step]

    def compute(src: dict, scale: bool, seed_value: float | None, at: float):
        if src["kind"] == "upload":
            picture = viewer.upload_picture(src["path"])
        else:
            picture = viewer.dataset_picture(src["split"], int(src["index"]))
        path = viewer.step_flow(picture, bool(scale), seed_value)
        plot_, sil_, third_, caption_ = viewer.step_panes(path, int(at))
        label = YOUR_PICTURE if src["kind"] == "upload" else GROUND_TRUTH
        return path, src, plot_, sil_, gr.update(value=third_, label=label), caption_

    @_shown
    def pick_dataset(split_name: str, i: float, scale: bool, seed_value: float | None, at: float):
        if split_name == YOURS:  # the index slider is not in use for an upload
            return (gr.skip(),) * len(outputs)
        return compute({"kind": "dataset", "split": split_name, "index": int(i)}, scale, seed_value, at)

    @_shown
    def pick_split(split_name: str, file_path: str | None, scale: bool, seed_value: float | None, at: float):
        if split_name == YOURS:
            if file_path is None:
                raise FlowSDFError("upload a picture first (the box below the seed)")
            return (gr.update(interactive=False), gr.skip(),
                    *compute({"kind": "upload", "path": file_path}, scale, seed_value, at))
        return (gr.update(maximum=viewer.split_size(split_name) - 1, value=0, interactive=True),
                viewer.split_thumbnails(split_name),
                *compute({"kind": "dataset", "split": split_name, "index": 0}, scale, seed_value, at))

    def pick_gallery(evt: gr.SelectData) -> int:
        return int(evt.index)

    @_shown
    def pick_upload(file_path: str | None, scale: bool, seed_value: float | None, at: float):
        if file_path is None:  # cleared: keep showing the last picture
            return (gr.skip(),) * (len(outputs) + 2)
        return (gr.update(value=YOURS), gr.update(interactive=False),
                *compute({"kind": "upload", "path": file_path}, scale, seed_value, at))

    @_shown
    def recompute(src: dict, scale: bool, seed_value: float | None, at: float):
        return compute(src, scale, seed_value, at)

    @_shown
    def redraw(path: FlowPath | None, at: float):
        if path is None:
            return (gr.skip(),) * 4
        return viewer.step_panes(path, int(at))

    def another_seed(seed_value: float | None) -> int:
        return (int(seed_value or 0) + 1) % (MAX_SEED + 1)

    split.input(pick_split, [split, upload, *settings], [index, gallery, *outputs], **_RUN)
    index.change(pick_dataset, [split, index, *settings], outputs, **_RUN)
    gallery.select(pick_gallery, None, index, **_QUICK)
    upload.upload(pick_upload, [upload, *settings], [split, index, *outputs], **_RUN)
    scaling.input(recompute, [source, *settings], outputs, **_RUN)
    seed.submit(recompute, [source, *settings], outputs, **_RUN)
    new_sample.click(another_seed, [seed], seed, **_QUICK).then(recompute, [source, *settings], outputs, **_RUN)
    # Redrawing runs no model: it does not wait behind a reconstruction.
    step.change(redraw, [path_state, step], [plot, sil, third, caption], concurrency_id="draw",
                concurrency_limit=1, **_PRIVATE)
    app.load(recompute, [source, *settings], outputs, **_RUN)


def _reconstruct_tab(viewer: Viewer) -> None:
    limits = viewer.limits
    examples = viewer.examples()
    key = gr.State(None)
    with gr.Accordion("How it works", open=False):
        gr.Markdown(RECON_INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            upload = gr.File(label="Your picture (PNG, JPEG, WebP)", type="filepath", height=110,
                             elem_id="recon-upload")
            example_gallery = gr.Gallery([(str(p), c) for p, c in examples], label="... or click an example",
                                         columns=4, height=120, allow_preview=False, elem_id="examples")
            samples = gr.Slider(1, limits.max_samples, value=limits.default_samples, step=1,
                                label=f"Samples K (1-{limits.max_samples})", elem_id="samples")
            resolution = gr.Slider(limits.min_resolution, limits.max_resolution, step=8,
                                   value=limits.default_resolution,
                                   label="Mesh resolution (grid points per axis)", elem_id="resolution")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="recon-seed")
            guidance = gr.Slider(GUIDANCE[0], GUIDANCE[1], step=0.5, value=viewer.default_guidance,
                                 label="Guidance W (1 = the plain conditional flow)", elem_id="guidance")
            go = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
            with gr.Row():
                seen = gr.Image(label="Your picture, as the model sees it", type="numpy", format="png",
                                interactive=False, buttons=[], elem_id="recon-input")
                sil = gr.Image(label="Silhouette from the picture's camera", type="numpy", format="png",
                               interactive=False, buttons=[], elem_id="recon-silhouette")
        with gr.Column(scale=2):
            verdict = gr.Markdown(elem_id="recon-verdict")
            model = gr.Model3D(label="3-D shape (drag to turn)", height=400, clear_color=BACKGROUND_3D,
                               elem_id="model3d")
            colour_bar = gr.Image(label="Uncertainty colour scale", type="numpy", format="png", interactive=False,
                                  buttons=[], visible=False, height=110, elem_id="colour-bar")
            shown = gr.Radio([], label="Shown in 3-D and downloaded", elem_id="shown")
            with gr.Row():
                downloads = [gr.DownloadButton(f"Download .{fmt}", visible=False, elem_id=f"download-{fmt}")
                             for fmt in ("glb", "obj", "ply")]
            sample_gallery = gr.Gallery(label="The K samples (click one to show it)", columns=8, height=170,
                                        object_fit="contain", allow_preview=False, elem_id="sample-gallery")
            caption = gr.Markdown(elem_id="recon-caption")

    result = [key, model, seen, sil, caption, verdict, sample_gallery, shown, colour_bar, *downloads]

    def clear():
        """The empty tab: nothing of a previous picture stays while a new request runs or after it fails."""
        hidden = gr.update(value=None, visible=False)
        return (None, None, None, None, "", "", [], gr.update(choices=[], value=None), hidden,
                *([hidden] * len(downloads)))

    @_shown
    def reconstruct(file_path: str | None, k: float, res: float, seed_value: float | None, w: float,
                    progress: gr.Progress = gr.Progress()):
        if file_path is None:
            raise FlowSDFError("upload a picture first, or click an example")
        out = viewer.reconstruct(file_path, int(k), int(res), seed_value, progress=lambda f, d: progress(f, desc=d),
                                 guidance=float(w))
        files = [gr.update(value=str(out.files[fmt]), visible=True) for fmt in ("glb", "obj", "ply")]
        bar = gr.update(value=out.colour_bar, visible=out.colour_bar is not None)
        return (out.key, str(out.files["glb"]), out.picture, out.silhouette, out.caption, out.verdict, out.gallery,
                gr.update(choices=out.choices, value=out.choices[0]), bar, *files)

    @_shown
    def show(current: str | None, choice: str | None):
        if not choice:
            return (gr.skip(),) * (2 + len(downloads))
        files, text = viewer.show(current, choice)
        return (str(files["glb"]), text, *[gr.update(value=str(files[fmt]), visible=True)
                                           for fmt in ("glb", "obj", "ply")])

    def pick_sample(evt: gr.SelectData) -> str:
        return f"sample {int(evt.index) + 1}"

    def pick_example(evt: gr.SelectData) -> str:
        return str(examples[int(evt.index)][0])

    inputs = [upload, samples, resolution, seed, guidance]
    shown_outputs = [model, caption, *downloads]
    # Progress (and a failure's mark) on the 3-D view only: the message says what went wrong.
    on_model = {"show_progress_on": [model]}
    go.click(clear, None, result, **_QUICK).then(reconstruct, inputs, result, **on_model, **_RUN)
    upload.upload(clear, None, result, **_QUICK)  # a new picture: the old result is not its result
    example_gallery.select(pick_example, None, upload, **_QUICK).then(clear, None, result, **_QUICK).then(
        reconstruct, inputs, result, **on_model, **_RUN)
    shown.input(show, [key, shown], shown_outputs, **on_model, **_RUN)
    sample_gallery.select(pick_sample, None, shown, **_QUICK).then(show, [key, shown], shown_outputs, **on_model,
                                                                   **_RUN)


def _text_tab(viewer: Viewer) -> None:
    """A prompt -> K sampled shapes: the mean coloured by their spread in 3-D, the samples in a gallery."""
    limits = viewer.limits
    gr.Markdown(TEXT_INTRO if viewer.text is not None else f"**Text to 3-D is off:** {html.escape(viewer.text_note)}",
                elem_id="text-intro")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            prompt = gr.Textbox(label="Prompt", placeholder="a tall red cylinder", lines=2, max_lines=4,
                                max_length=MAX_PROMPT_CHARACTERS, elem_id="prompt")
            samples = gr.Slider(1, limits.max_samples, value=limits.default_samples, step=1,
                                label=f"Samples K (1-{limits.max_samples})", elem_id="text-samples")
            resolution = gr.Slider(limits.min_resolution, limits.max_resolution, step=8,
                                   value=limits.default_resolution,
                                   label="Mesh resolution (grid points per axis)", elem_id="text-resolution")
            guidance = gr.Slider(GUIDANCE[0], GUIDANCE[1], step=0.5, value=viewer.default_text_guidance,
                                 label="Guidance W (1 = the plain conditional flow)", elem_id="text-guidance")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="text-seed")
            go = gr.Button("Generate", variant="primary", elem_id="generate", interactive=viewer.text is not None)
        with gr.Column(scale=2):
            model = gr.Model3D(label="3-D shape (drag to turn)", height=400, clear_color=BACKGROUND_3D,
                               elem_id="text-model3d")
            colour_bar = gr.Image(label="Uncertainty colour scale", type="numpy", format="png", interactive=False,
                                  buttons=[], visible=False, height=110, elem_id="text-colour-bar")
            with gr.Row():
                downloads = [gr.DownloadButton(f"Download .{fmt}", visible=False, elem_id=f"text-download-{fmt}")
                             for fmt in ("glb", "obj", "ply")]
            gallery = gr.Gallery(label="The K samples", columns=8, height=170, object_fit="contain",
                                 allow_preview=False, elem_id="text-gallery")
            caption = gr.Markdown(elem_id="text-caption")
    result = [model, caption, gallery, colour_bar, *downloads]

    def clear():
        hidden = gr.update(value=None, visible=False)
        return (None, "", [], hidden, *([hidden] * len(downloads)))

    @_shown
    def generate(text: str, k: float, res: float, w: float, seed_value: float | None,
                 progress: gr.Progress = gr.Progress()):
        out = viewer.generate(text or "", int(k), int(res), seed_value, float(w),
                              progress=lambda f, d: progress(f, desc=d))
        files = [gr.update(value=str(out.files[fmt]), visible=True) for fmt in ("glb", "obj", "ply")]
        bar = gr.update(value=out.colour_bar, visible=out.colour_bar is not None)
        return (str(out.files["glb"]), out.caption, out.gallery, bar, *files)

    inputs = [prompt, samples, resolution, guidance, seed]
    go.click(clear, None, result, **_QUICK).then(generate, inputs, result, show_progress_on=[model], **_RUN)
    prompt.submit(clear, None, result, **_QUICK).then(generate, inputs, result, show_progress_on=[model], **_RUN)


# --- serving ------------------------------------------------------------------------------------

# The routes the page itself requests (method, path), found by watching the browser tests'
# requests (tests/test_viewer_browser.py checks both sides); anything else is not served.
EXACT = {
    ("GET", "/"), ("HEAD", "/"), ("GET", "/config"), ("GET", "/config/"), ("GET", "/theme.css"),
    ("GET", "/favicon.ico"), ("GET", "/manifest.json"), ("GET", "/robots.txt"), ("GET", "/gradio_api/info"),
    ("GET", "/gradio_api/theme.css"), ("GET", "/gradio_api/startup-events"), ("GET", "/gradio_api/app_id"),
    ("GET", "/gradio_api/queue/data"), ("GET", "/gradio_api/upload_progress"),
    ("POST", "/gradio_api/queue/join"), ("POST", "/gradio_api/upload"), ("POST", "/gradio_api/cancel"),
    ("POST", "/gradio_api/reset"),
}
PREFIXES = (
    ("GET", "/assets/"), ("GET", "/static/"), ("GET", "/svelte/"), ("GET", "/pwa_icon"),
    ("GET", "/gradio_api/heartbeat/"), ("GET", "/gradio_api/file="), ("HEAD", "/gradio_api/file="),
)
UPLOAD = ("POST", "/gradio_api/upload")


def allowed(method: str, path: str) -> bool:
    """Whether the page uses this route (EXACT, or under one of PREFIXES)."""
    return (method, path) in EXACT or any(method == m and path.startswith(p) for m, p in PREFIXES)


class Guard:
    """ASGI middleware: unused routes get 404, uploads beyond a rate get 429."""

    def __init__(self, app, uploads_per_minute: int):
        self.app, self.rate = app, uploads_per_minute
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if not allowed(method, path):
            return await _reply(send, 404, "not served by flowsdf view")
        if (method, path) == UPLOAD and not self._take(scope.get("client") or ("?", 0)):
            return await _reply(send, 429, f"too many uploads: at most {self.rate} a minute; wait a moment")
        return await self.app(scope, receive, send)

    def _take(self, client: tuple) -> bool:
        """Count one upload from this client address; False when it is over the rate."""
        now, host = time.monotonic(), str(client[0])
        with self._lock:
            recent = self._recent[host]
            while recent and now - recent[0] > 60.0:
                recent.popleft()
            if len(recent) >= self.rate:
                return False
            recent.append(now)
            return True


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a port in use or a bad address is one FlowSDFError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise FlowSDFError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise FlowSDFError(f"cannot serve on {host}:{port}: the port is in use; choose another --port") from e
        raise FlowSDFError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e
    return sock


class Stopped(Exception):
    """The server was asked to stop by a signal (SIGTERM)."""


def _stop(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def serve(blocks, max_upload_bytes: int, uploads_per_minute: int, host: str, port: int) -> None:
    """Serve `blocks` (queued) on host:port until Ctrl-C or SIGTERM, which end it the same way:
    KeyboardInterrupt or `Stopped` out of this call, after the server has shut down."""
    import uvicorn
    from fastapi import FastAPI

    sock = bind(host, port)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(Guard, uploads_per_minute=uploads_per_minute)
    gr.mount_gradio_app(app, blocks, path="", server_name=host, server_port=port, footer_links=[],
                        run_history=False, max_file_size=max_upload_bytes, show_error=True, mcp_server=False,
                        enable_monitoring=False, ssr_mode=False)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    # uvicorn catches SIGINT / SIGTERM while it serves, shuts down, then raises the signal again. How
    # that second signal surfaces depends on what asyncio is doing at that instant (a SIGINT can end
    # as a cancelled task, or not at all), so the signal is remembered when uvicorn first sees it and
    # decides what this call raises.
    asked: list[str] = []
    uvicorn_exit = server.handle_exit

    def handle_exit(sig: int, frame) -> None:
        asked.append(signal.Signals(sig).name)
        uvicorn_exit(sig, frame)

    server.handle_exit = handle_exit
    shown = "[" + host + "]" if ":" in host else host
    print(f"flowsdf view: serving http://{shown}:{port}/ (Ctrl-C or SIGTERM to stop)", file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, Stopped, asyncio.CancelledError):
        if not asked:  # not uvicorn's: e.g. Ctrl-C before it started listening for signals
            raise
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if asked:
        raise KeyboardInterrupt if asked[0] == "SIGINT" else Stopped(asked[0])
