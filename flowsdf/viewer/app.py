"""The viewer's page: a Gradio Blocks app over a loaded `Viewer` (no hand-written front end).

Two tabs: "Step the flow" and "Reconstruct". Every handler turns a FlowSDFError (bad picture,
seed out of range ...) into a gr.Error, which the page shows as a message, and the server goes on
serving. One computation runs at a time (one shared concurrency group) and at most `QUEUE_SIZE`
requests wait, so a burst of requests cannot exhaust the machine.
"""

from __future__ import annotations

import functools
import os

# Before gradio is imported: the viewer is a local tool and sends nothing anywhere.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402  (after the environment is set)

from flowsdf.errors import FlowSDFError  # noqa: E402
from flowsdf.viewer.backend import MAX_SEED, SPLITS, FlowPath, Viewer  # noqa: E402

QUEUE_SIZE = 16
_RUN = {"concurrency_id": "model", "concurrency_limit": 1}  # everything that runs a model

STEP_INTRO = """\
The flow starts from noise (step 0) and takes {steps} Euler steps along its learned velocity to a
shape's code (step {steps}). **Latent**: the state on the plane of the training codes' two
principal axes ({source}), the path so far, and its norm against theirs. **Silhouette**: what the
SDF decoder makes of that state, seen from the picture's camera. **Ground truth**: the true
silhouette from that camera (an upload has none: the picture is shown instead). **Noise scaling
off** swaps in the flow distilled from unscaled noise (sigma = 1): its path starts far outside the
codes, which is the collapse noise scaling prevents."""

RECON_INTRO = """\
Upload a picture (an object on a black background, like the training renders). The flow draws
K codes from K seeds; each is meshed by marching cubes at the chosen resolution. With K >= 2
the mesh shown is the mean code's, coloured by uncertainty: the spread of the K decoded SDFs at
each vertex (dark = the samples agree, bright = they disagree). The silhouette is the mean code's
from the picture's camera, which a picture does not reveal and is therefore searched among
dataset-like viewpoints."""


def _shown(fn):
    """Run a handler; a FlowSDFError becomes a message in the page (gr.Error)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlowSDFError as e:
            raise gr.Error(str(e), duration=None) from e

    return wrapper


def build_app(viewer: Viewer) -> gr.Blocks:
    """The page for a loaded run."""
    with gr.Blocks(title=f"flowsdf viewer: {viewer.run_dir.name}", delete_cache=(600, 3600)) as app:
        gr.Markdown(f"### flowsdf viewer: `{viewer.run_dir}`\nFlow: {viewer.flow.cfg.flow.steps} Euler steps, "
                    f"noise scale sigma = {viewer.flow.sigma:.3f}, device {viewer.flow.device}. "
                    f"Uploads up to {viewer.limits.max_upload_mb:g} MB.")
        with gr.Tabs():
            with gr.Tab("Step the flow", id="step", elem_id="tab-step"):
                _step_tab(app, viewer)
            with gr.Tab("Reconstruct", id="reconstruct", elem_id="tab-reconstruct"):
                _reconstruct_tab(viewer)
    return app.queue(max_size=QUEUE_SIZE)


def serve(app: gr.Blocks, viewer: Viewer, host: str, port: int, block: bool = True) -> None:
    """Serve the page on host:port (max upload size from the viewer's limits)."""
    try:
        app.launch(server_name=host, server_port=port, max_file_size=viewer.limits.max_upload_bytes,
                   prevent_thread_lock=not block, show_error=True, quiet=False)
    except OSError as e:  # gradio's way of saying the port is taken or the address cannot be bound
        if "Cannot find empty port" in str(e):
            raise FlowSDFError(f"cannot serve on {host}:{port}: the port is in use; choose another --port") from e
        raise FlowSDFError(f"cannot serve on {host}:{port}: {e}") from e


def _step_tab(app: gr.Blocks, viewer: Viewer) -> None:
    steps = viewer.flow.cfg.flow.steps
    has_noscale = viewer.noscale is not None
    source = gr.State({"kind": "dataset", "split": "training", "index": 0})
    path_state = gr.State(None)
    gr.Markdown(STEP_INTRO.format(steps=steps, source=viewer.frame.source))
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            split = gr.Radio(list(SPLITS), value="training", label="Dataset split", elem_id="split")
            index = gr.Slider(0, viewer.split_size("training") - 1, value=0, step=1, label="Picture index",
                              elem_id="picture-index")
            gallery = gr.Gallery(viewer.split_thumbnails("training"), label="Pick a picture", columns=6,
                                 height=180, allow_preview=False, elem_id="gallery")
            upload = gr.File(label="... or upload a picture (PNG, JPEG, WebP)", type="filepath", height=150,
                             elem_id="step-upload")
            scaling = gr.Checkbox(value=True, label="Noise scaling", interactive=has_noscale, elem_id="scaling",
                                  info="off: the flow distilled with sigma = 1" if has_noscale
                                  else "this run has no flow distilled without scaling")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                new_sample = gr.Button("New sample", elem_id="new-sample")
        with gr.Column(scale=3):
            step = gr.Slider(0, steps, value=steps, step=1, label="Euler step", elem_id="step-slider")
            plot = gr.Image(label="Latent", type="numpy", format="png", interactive=False, height=340, buttons=[],
                            elem_id="latent-plot")
            with gr.Row():
                sil = gr.Image(label="Silhouette at this step", type="numpy", format="png", interactive=False,
                               height=280, buttons=[], elem_id="silhouette")
                third = gr.Image(label="Ground truth", type="numpy", format="png", interactive=False, height=280,
                                 buttons=[], elem_id="ground-truth")
            caption = gr.Markdown(elem_id="step-caption")

    outputs = [path_state, source, plot, sil, third, caption]
    settings = [scaling, seed, step]

    @_shown
    def compute(src: dict, scale: bool, seed_value: float | None, at: float):
        if src["kind"] == "upload":
            picture = viewer.upload_picture(src["path"])
        else:
            picture = viewer.dataset_picture(src["split"], int(src["index"]))
        path = viewer.step_flow(picture, bool(scale), seed_value)
        return (path, src, *viewer.step_panes(path, int(at)))

    def pick_dataset(split_name: str, i: float, scale: bool, seed_value: float | None, at: float):
        return compute({"kind": "dataset", "split": split_name, "index": int(i)}, scale, seed_value, at)

    @_shown
    def pick_split(split_name: str):
        return gr.update(maximum=viewer.split_size(split_name) - 1, value=0), viewer.split_thumbnails(split_name)

    def pick_gallery(evt: gr.SelectData) -> int:
        return int(evt.index)

    def pick_upload(file_path: str | None, scale: bool, seed_value: float | None, at: float):
        if file_path is None:  # cleared: keep showing the last picture
            return (gr.skip(),) * len(outputs)
        return compute({"kind": "upload", "path": file_path}, scale, seed_value, at)

    def redraw(path: FlowPath | None, at: float):
        if path is None:
            return (gr.skip(),) * 4
        return viewer.step_panes(path, int(at))

    def another_seed(seed_value: float | None) -> int:
        return (int(seed_value or 0) + 1) % (MAX_SEED + 1)

    # A new split resets the index to 0, which is no change when it was 0 already: draw explicitly
    # (a second draw of the same picture is a cache hit).
    dataset_inputs = [split, index, *settings]
    split.input(pick_split, [split], [index, gallery], **_RUN).then(pick_dataset, dataset_inputs, outputs, **_RUN)
    index.change(pick_dataset, dataset_inputs, outputs, **_RUN)
    gallery.select(pick_gallery, None, index)
    upload.upload(pick_upload, [upload, *settings], outputs, **_RUN)
    scaling.input(compute, [source, *settings], outputs, **_RUN)
    seed.submit(compute, [source, *settings], outputs, **_RUN)
    new_sample.click(another_seed, [seed], seed).then(compute, [source, *settings], outputs, **_RUN)
    # Redrawing runs no model: it does not wait behind a reconstruction.
    step.change(redraw, [path_state, step], [plot, sil, third, caption], concurrency_id="draw", concurrency_limit=1)
    app.load(compute, [source, *settings], outputs, **_RUN)


def _reconstruct_tab(viewer: Viewer) -> None:
    limits = viewer.limits
    gr.Markdown(RECON_INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            upload = gr.File(label="Picture (PNG, JPEG, WebP)", type="filepath", elem_id="recon-upload")
            samples = gr.Slider(1, limits.max_samples, value=min(4, limits.max_samples), step=1,
                                label=f"Samples K (1-{limits.max_samples})", elem_id="samples")
            resolution = gr.Slider(limits.min_resolution, limits.max_resolution, step=8,
                                   value=max(limits.min_resolution, min(64, limits.max_resolution)),
                                   label="Mesh resolution (grid points per axis)", elem_id="resolution")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="recon-seed")
            go = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
        with gr.Column(scale=2):
            model = gr.Model3D(label="3-D shape (drag to turn)", height=420, elem_id="model3d")
            with gr.Row():
                seen = gr.Image(label="Picture as the model sees it", type="numpy", format="png", interactive=False,
                                elem_id="recon-input")
                sil = gr.Image(label="Silhouette from the picture's camera", type="numpy", format="png",
                               interactive=False, elem_id="recon-silhouette")
            caption = gr.Markdown(elem_id="recon-caption")
            with gr.Row():
                downloads = [gr.DownloadButton(f"Download .{fmt}", visible=False, elem_id=f"download-{fmt}")
                             for fmt in ("glb", "obj", "ply")]

    @_shown
    def reconstruct(file_path: str | None, k: float, res: float, seed_value: float | None,
                    progress: gr.Progress = gr.Progress()):
        if file_path is None:
            raise FlowSDFError("upload a picture first")
        out = viewer.reconstruct(file_path, int(k), int(res), seed_value, progress=lambda f, d: progress(f, desc=d))
        files = [gr.update(value=str(out.files[fmt]), visible=True) for fmt in ("glb", "obj", "ply")]
        return (str(out.files["glb"]), out.picture, out.silhouette, out.caption, *files)

    go.click(reconstruct, [upload, samples, resolution, seed], [model, seen, sil, caption, *downloads], **_RUN)
