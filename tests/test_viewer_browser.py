"""`flowsdf view` in a real browser: Debian's headless Chromium driven by playwright.

One server (the real command, in a subprocess, serving a tiny trained run on a free 127.0.0.1
port) and one browser for the whole module; each test opens a fresh page. Screenshots of both
tabs go to tests/artifacts/ (ignored by git); the path is printed.

Needs the `chromium` package (`apt-get install chromium`; .ci/run installs it) or
FLOWSDF_CHROMIUM pointing at another Chromium. Never `playwright install`: the browser is the
system's.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import trimesh
from bad_pictures import declared_png, empty_file, noise_png, text_file
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from flowsdf import config as config_mod
from flowsdf.data import dataset

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("FLOWSDF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
UPLOAD_LIMIT_MB = 0.2  # small, so the over-large upload is small too
# Short: the tiny run answers in a few seconds even on 2 shared cores, so a wiring fault (an event
# that never fires, a selector that never matches) fails in seconds rather than minutes.
TIMEOUT_MS = 30_000
STEPS = config_mod.preset("tiny").flow.steps  # the tiny run's Euler steps
SINGLE_COLOUR = (86, 118, 160, 255)  # flowsdf.viewer.recon.SINGLE_COLOUR


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=5) as r:
        return r.status


@pytest.fixture(scope="module")
def served(tiny_surface_run, tmp_path_factory):
    """The viewer serving the tiny run (with a surface, so meshes are not empty): (url, its log)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("viewer") / "server.log"
    cmd = [sys.executable, "-m", "flowsdf", "view", str(tiny_surface_run), "--port", str(port), "--device", "cpu",
           "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--max-samples", "2", "--max-resolution", "40"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the viewer exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if _get(url) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the viewer did not serve within 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium`, or set FLOWSDF_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, server: str, width: int = 1400, height: int = 1000) -> Page:
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(server)
    page.wait_for_selector("#silhouette img")  # the first picture's flow is drawn on load
    return page


@pytest.fixture
def page(browser, server) -> Page:
    page = _open(browser, server)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def good_png(tiny_data_dir, tmp_path_factory) -> Path:
    """A training picture of the tiny dataset as a PNG file."""
    image = dataset.load(tiny_data_dir).train.input.images[0, 0]  # (3, S, S)
    path = tmp_path_factory.mktemp("pictures") / "shape.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize((64, 64)).save(path)
    return path


def _src(page: Page, elem: str) -> str:
    return page.get_attribute(f"#{elem} img", "src")


def _wait_src_change(page: Page, elem: str, old: str) -> str:
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); return i && i.src !== old; }",
                           arg=[f"#{elem} img", old])
    return _src(page, elem)


def _pixels(page: Page, src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _set_slider(page: Page, elem: str, value: int) -> None:
    box = page.locator(f"#{elem} input[data-testid='number-input']")
    box.fill(str(value))
    box.press("Enter")


def _wait_for_3d(page: Page) -> None:
    """Wait until the 3-D view's canvas shows something: a share of its pixels is not background.

    WebGL runs on Chromium's software renderer (SwiftShader) here; the model appears once the
    GLB is fetched and parsed.
    """
    canvas = page.locator("#model3d canvas")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)  # (H, W, 3)
        background = np.round(np.array([0.92, 0.93, 0.95]) * 255)  # flowsdf.viewer.app.BACKGROUND_3D
        drawn = float((np.abs(shot - background).max(axis=2) > 40).mean())
        if drawn > 0.01:
            return
        assert time.monotonic() < deadline, f"the 3-D view stayed empty ({100 * drawn:.2f} % of pixels drawn)"
        time.sleep(0.5)


def _screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


def _upload(page: Page, elem: str, picture: Path) -> None:
    """Put a file into a gr.File, clearing what it holds first."""
    clear = page.locator(f"#{elem} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator(f"#{elem} input[type='file']").set_input_files(str(picture))


def _reconstruct(page: Page, picture: Path) -> None:
    _upload(page, "recon-upload", picture)
    page.locator("#reconstruct").click()


def _download(page: Page, elem: str, path: Path) -> trimesh.Trimesh:
    with page.expect_download() as download:
        page.locator(f"#{elem}").click()
    download.value.save_as(path)
    return trimesh.load(path, file_type=path.suffix[1:], force="mesh", process=False)


def test_step_slider_moves_the_silhouette_from_noise_to_the_shape(page):
    expect(page.locator("#step-caption")).to_contain_text(f"Step {STEPS} of {STEPS}")
    at_end = _src(page, "silhouette")
    _set_slider(page, "step-slider", 0)
    at_start = _wait_src_change(page, "silhouette", at_end)
    expect(page.locator("#step-caption")).to_contain_text(f"Step 0 of {STEPS}")
    assert (_pixels(page, at_start) != _pixels(page, at_end)).any()
    _set_slider(page, "step-slider", STEPS)
    expect(page.locator("#step-caption")).to_contain_text(f"Step {STEPS} of {STEPS}")
    np.testing.assert_array_equal(_pixels(page, _wait_src_change(page, "silhouette", at_start)),
                                  _pixels(page, at_end))  # the same step draws the same silhouette
    expect(page.locator("#ground-truth img")).to_be_visible()
    _screenshot(page, "step_the_flow.png")


def test_noise_scaling_switch_changes_the_final_silhouette(page):
    expect(page.locator("#step-caption")).to_contain_text("noise scaling on")
    scaled = _src(page, "silhouette")
    page.locator("#scaling input[type='checkbox']").click()
    unscaled = _wait_src_change(page, "silhouette", scaled)
    expect(page.locator("#step-caption")).to_contain_text("noise scaling off")
    expect(page.locator("#step-caption")).to_contain_text(f"Step {STEPS} of {STEPS}")
    assert (_pixels(page, scaled) != _pixels(page, unscaled)).any()


def test_split_gallery_and_new_sample_pick_what_is_drawn(page):
    page.get_by_role("radio", name="held-out").check()
    expect(page.locator("#step-caption")).to_contain_text("held-out picture 0")
    page.locator("#gallery button.thumbnail-item").nth(1).click()  # the second thumbnail
    expect(page.locator("#step-caption")).to_contain_text("held-out picture 1")
    _set_slider(page, "step-slider", 0)  # noise: certainly another picture for another seed
    expect(page.locator("#step-caption")).to_contain_text("Step 0 of")
    first = _src(page, "silhouette")
    page.locator("#new-sample").click()
    expect(page.locator("#step-caption")).to_contain_text("seed 1")
    assert (_pixels(page, _wait_src_change(page, "silhouette", first)) != _pixels(page, first)).any()
    _set_slider(page, "picture-index", 0)
    expect(page.locator("#step-caption")).to_contain_text("held-out picture 0")


def test_reconstruct_shows_a_3d_view_a_colour_bar_and_offers_a_valid_glb(page, good_png, tmp_path):
    page.get_by_role("tab", name="Reconstruct").click()
    _reconstruct(page, good_png)
    expect(page.locator("#download-glb")).to_be_visible()
    _wait_for_3d(page)
    expect(page.locator("#recon-caption")).to_contain_text("Shown: mean of the samples of 2 sample(s)")
    expect(page.locator("#recon-verdict")).not_to_be_empty()
    expect(page.locator("#colour-bar img")).to_be_visible()  # K = 2: the uncertainty's colour bar
    bar = _pixels(page, _src(page, "colour-bar"))
    assert bar.shape[1] > 300 and len(np.unique(bar.reshape(-1, 3), axis=0)) > 50  # a gradient with its labels
    expect(page.locator("#recon-caption")).to_contain_text("fixed scale 0-0.05 object units")
    mesh = _download(page, "download-glb", tmp_path / "shape.glb")
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)  # uncertainty colours (K = 2)
    expect(page.locator("#recon-silhouette img")).to_be_visible()
    expect(page.locator("#recon-input img")).to_be_visible()
    _screenshot(page, "reconstruct.png")
    _set_slider(page, "samples", 1)  # one sample: no spread, no colour bar, the readable single colour
    page.locator("#reconstruct").click()
    expect(page.locator("#recon-caption")).to_contain_text("Shown: sample 1 of 1 sample(s)")
    expect(page.locator("#colour-bar")).to_be_hidden()
    mesh = _download(page, "download-glb", tmp_path / "one.glb")
    assert (mesh.visual.vertex_colors == SINGLE_COLOUR).all()


def test_the_k_samples_are_in_a_gallery_to_show_and_download(page, good_png, tmp_path):
    page.get_by_role("tab", name="Reconstruct").click()
    _reconstruct(page, good_png)
    tiles = page.locator("#sample-gallery button.thumbnail-item")
    expect(tiles).to_have_count(2)
    expect(page.locator("#recon-caption")).to_contain_text("Shown: mean of the samples")
    tiles.nth(1).click()
    expect(page.locator("#recon-caption")).to_contain_text("Shown: sample 2 of 2 sample(s)")
    expect(page.get_by_role("radio", name="sample 2")).to_be_checked()
    second = _download(page, "download-ply", tmp_path / "sample2.ply")
    page.get_by_role("radio", name="sample 1").check()
    expect(page.locator("#recon-caption")).to_contain_text("Shown: sample 1 of 2 sample(s)")
    first = _download(page, "download-ply", tmp_path / "sample1.ply")
    assert len(first.faces) > 0 and len(second.faces) > 0
    assert (second.visual.vertex_colors == SINGLE_COLOUR).all()
    assert len(first.vertices) != len(second.vertices) or not np.allclose(first.vertices, second.vertices)
    _wait_for_3d(page)


def test_an_error_clears_the_previous_result(page, good_png, tmp_path):
    page.get_by_role("tab", name="Reconstruct").click()
    _reconstruct(page, good_png)
    expect(page.locator("#download-glb")).to_be_visible()
    expect(page.locator("#sample-gallery button.thumbnail-item")).to_have_count(2)
    _reconstruct(page, text_file(tmp_path / "notes.png"))
    expect(page.get_by_text("notes.png: not a picture flowsdf reads").first).to_be_visible()
    for fmt in ("glb", "obj", "ply"):  # Download .glb must not return the previous picture's mesh
        expect(page.locator(f"#download-{fmt}")).to_be_hidden()
    expect(page.locator("#recon-caption")).to_have_text("")
    expect(page.locator("#recon-verdict")).to_have_text("")
    expect(page.locator("#sample-gallery button.thumbnail-item")).to_have_count(0)
    expect(page.locator("#recon-input img")).to_have_count(0)
    expect(page.locator("#colour-bar")).to_be_hidden()


def test_example_pictures_are_prepared_and_reconstructed_on_a_click(page):
    page.get_by_role("tab", name="Reconstruct").click()
    examples = page.locator("#examples button.thumbnail-item")
    expect(examples).to_have_count(4)
    examples.nth(1).click()  # the held-out shape on white
    expect(page.locator("#recon-caption")).to_contain_text("found on a white background")
    expect(page.locator("#download-glb")).to_be_visible()
    seen = _pixels(page, _src(page, "recon-input"))
    assert (seen[0, 0] == 0).all() and (seen.max(axis=2) > 20).any()  # prepared: the object on black


@pytest.mark.parametrize("kind, message", [
    ("not-an-image", "not a picture flowsdf reads"),
    ("empty", "the file is empty (0 bytes)"),
    ("huge-declared-size", "over the limit of 64,000,000"),
    ("over-the-upload-limit", "exceed the maximum allowed size"),
])
def test_bad_upload_is_an_error_in_the_page_and_the_next_request_succeeds(page, served, kind, message, good_png,
                                                                          tmp_path):
    bad = {
        "not-an-image": lambda p: text_file(p / "notes.txt"),
        "empty": lambda p: empty_file(p / "empty.png"),
        "huge-declared-size": lambda p: declared_png(p / "huge.png", 100_000, 100_000),
        "over-the-upload-limit": lambda p: noise_png(p / "big.png", 300),  # ~270 kB > 200 kB
    }[kind](tmp_path)
    page.get_by_role("tab", name="Reconstruct").click()
    if kind == "over-the-upload-limit":  # refused on upload, before any request is made
        assert bad.stat().st_size > UPLOAD_LIMIT_MB * 1e6
        _upload(page, "recon-upload", bad)
    else:
        _reconstruct(page, bad)
    expect(page.get_by_text(message).first).to_be_visible()
    _reconstruct(page, good_png)
    expect(page.locator("#recon-caption")).to_contain_text("2 sample(s)")
    expect(page.locator("#download-glb")).to_be_visible()
    if kind != "over-the-upload-limit":  # refused by the handler: one line in the server's log, no traceback
        log = served[1].read_text()
        assert "Traceback" not in log
        assert sum(message in line and " refused: " in line for line in log.splitlines()) >= 1, log[-2000:]


def test_the_upload_limit_reads_the_same_in_the_header_and_the_refusal(page, tmp_path):
    limit = f"{UPLOAD_LIMIT_MB * 1024:.1f}"  # 0.2 MB of 1,048,576 bytes, as the page counts: 204.8 KB
    expect(page.get_by_text(f"Uploads up to {limit} KB")).to_be_visible()
    page.get_by_role("tab", name="Reconstruct").click()
    _upload(page, "recon-upload", noise_png(tmp_path / "big.png", 300))
    expect(page.get_by_text(f"maximum allowed size of {limit} Kb").first).to_be_visible()


def test_bad_upload_on_the_step_tab_then_a_good_one_says_your_picture(page, good_png, tmp_path):
    _upload(page, "step-upload", text_file(tmp_path / "notes.png"))
    expect(page.get_by_text("notes.png: not a picture flowsdf reads").first).to_be_visible()
    before = _src(page, "ground-truth")
    expect(page.locator("#ground-truth")).to_contain_text("Ground truth")
    _upload(page, "step-upload", good_png)
    _wait_src_change(page, "ground-truth", before)  # the third pane shows the picture, not a mask
    expect(page.locator("#step-caption")).to_contain_text("your picture shape.png")
    expect(page.locator("#step-caption")).to_contain_text("searched")
    expect(page.locator("#step-caption")).to_contain_text("Prepared: the object was found on a black background")
    expect(page.get_by_role("radio", name="your picture")).to_be_checked()
    expect(page.locator("#ground-truth")).to_contain_text("Your picture, as the model sees it")
    expect(page.locator("#picture-index input[type='range']")).to_be_disabled()
    page.get_by_role("radio", name="held-out").check()  # back to the dataset: its labels come back
    expect(page.locator("#step-caption")).to_contain_text("held-out picture 0")
    expect(page.locator("#ground-truth")).to_contain_text("Ground truth")


def test_the_step_tabs_slider_and_three_panes_fit_one_1280x900_screen(browser, server):
    """The seed's picture: the slider, the latent, the silhouette and the ground truth side by side,
    all on the first screen of a 1280x900 window."""
    page = _open(browser, server, 1280, 900)
    try:
        boxes = {}
        for elem in ("step-slider", "latent-plot", "silhouette", "ground-truth"):
            expect(page.locator(f"#{elem}")).to_be_visible()
            box = page.locator(f"#{elem}").bounding_box()
            assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= 1280, (elem, box)
            assert box["y"] + box["height"] <= 900, (elem, box)  # above the fold
            boxes[elem] = box
        panes = [boxes[e] for e in ("latent-plot", "silhouette", "ground-truth")]
        assert panes[0]["x"] < panes[1]["x"] < panes[2]["x"]  # side by side, in the seed's order
        assert max(abs(b["y"] - panes[0]["y"]) for b in panes) < 5
        for elem in ("latent-plot", "silhouette", "ground-truth"):
            img = page.locator(f"#{elem} img").bounding_box()
            assert img["y"] + img["height"] <= 900 and img["height"] > 150, (elem, img)
        shot = np.asarray(Image.open(_screenshot(page, "step_1280x900.png", full_page=False)))
        assert shot.shape[:2] == (900, 1280)
    finally:
        page.context.close()


def test_the_server_itself_refuses_an_over_large_upload_and_unused_routes(page, server, tmp_path):
    big = noise_png(tmp_path / "big.png", 300)
    response = page.request.post(server + "gradio_api/upload",
                                 multipart={"files": {"name": "big.png", "mimeType": "image/png",
                                                      "buffer": big.read_bytes()}})
    assert response.status == 413
    assert page.request.get(server).ok  # and goes on serving
    # Gradio's client API, schema and extras are not served; the page does not use them.
    assert page.request.post(server + "gradio_api/call/reconstruct", data={"data": []}).status == 404
    assert page.request.post(server + "gradio_api/run/predict", data={"data": []}).status == 404
    for path in ("gradio_api/openapi.json", "openapi.json", "monitoring", "gradio_api/proxy=http://example.com/"):
        assert page.request.get(server + path).status == 404, path
    info = page.request.get(server + "gradio_api/info").json()
    assert info["named_endpoints"] == {}  # no event offered to API clients


def test_the_text_tab_of_a_run_without_a_text_model_says_so_and_cannot_run(page):
    page.get_by_role("tab", name="Text to 3-D").click()
    expect(page.locator("#text-intro")).to_contain_text("Text to 3-D is off", timeout=TIMEOUT_MS)
    expect(page.locator("#text-intro")).to_contain_text("flowsdf train --stage text")
    expect(page.locator("#generate")).to_be_disabled()
