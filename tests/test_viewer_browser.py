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
TIMEOUT_MS = 240_000  # generous: CI has 2 shared cores, and the camera search renders 144 views
STEPS = config_mod.preset("tiny").flow.steps  # the tiny run's Euler steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=5) as r:
        return r.status


@pytest.fixture(scope="module")
def server(tiny_surface_run, tmp_path_factory):
    """The viewer serving the tiny run (with a surface, so meshes are not empty)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("viewer") / "server.log"
    cmd = [sys.executable, "-m", "flowsdf", "view", str(tiny_surface_run), "--port", str(port), "--device", "cpu",
           "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--max-samples", "2", "--max-resolution", "40"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
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
                pytest.fail(f"the viewer did not serve within 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium`, or set FLOWSDF_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server) -> Page:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(server)
    page.wait_for_selector("#silhouette img")  # the first picture's flow is drawn on load
    yield page
    context.close()


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
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"))  # (H, W, 3)
        drawn = float((shot.min(axis=2) < 200).mean())  # far from the white background
        if drawn > 0.01:
            return
        assert time.monotonic() < deadline, f"the 3-D view stayed empty ({100 * drawn:.2f} % of pixels drawn)"
        time.sleep(0.5)


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def _upload(page: Page, elem: str, picture: Path) -> None:
    """Put a file into a gr.File, clearing what it holds first."""
    clear = page.locator(f"#{elem} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator(f"#{elem} input[type='file']").set_input_files(str(picture))


def _reconstruct(page: Page, picture: Path) -> None:
    _upload(page, "recon-upload", picture)
    page.locator("#reconstruct").click()


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


def test_reconstruct_shows_a_3d_view_and_offers_a_valid_glb(page, good_png, tmp_path):
    page.get_by_role("tab", name="Reconstruct").click()
    _reconstruct(page, good_png)
    expect(page.locator("#download-glb")).to_be_visible()
    _wait_for_3d(page)
    expect(page.locator("#recon-caption")).to_contain_text("2 sample(s)")
    with page.expect_download() as download:
        page.locator("#download-glb").click()
    glb = tmp_path / "shape.glb"
    download.value.save_as(glb)
    mesh = trimesh.load(glb, file_type="glb", force="mesh", process=False)
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)  # uncertainty colours (K = 2)
    expect(page.locator("#recon-silhouette img")).to_be_visible()
    _screenshot(page, "reconstruct.png")


@pytest.mark.parametrize("kind, message", [
    ("not-an-image", "not a picture Pillow can read"),
    ("empty", "the file is empty (0 bytes)"),
    ("huge-declared-size", "over the limit of 64,000,000"),
    ("over-the-upload-limit", "exceed the maximum allowed size"),
])
def test_bad_upload_is_an_error_in_the_page_and_the_next_request_succeeds(page, kind, message, good_png, tmp_path):
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


def test_bad_upload_on_the_step_tab_then_a_good_one_with_its_camera_estimated(page, good_png, tmp_path):
    _upload(page, "step-upload", text_file(tmp_path / "notes.png"))
    expect(page.get_by_text("notes.png: not a picture Pillow can read").first).to_be_visible()
    before = _src(page, "ground-truth")
    _upload(page, "step-upload", good_png)
    _wait_src_change(page, "ground-truth", before)  # the third pane shows the picture, not a mask
    expect(page.locator("#step-caption")).to_contain_text("uploaded picture shape.png")
    expect(page.locator("#step-caption")).to_contain_text("estimated")


def test_the_server_itself_refuses_an_over_large_upload(page, server, tmp_path):
    big = noise_png(tmp_path / "big.png", 300)
    response = page.request.post(server + "gradio_api/upload",
                                 multipart={"files": {"name": "big.png", "mimeType": "image/png",
                                                      "buffer": big.read_bytes()}})
    assert response.status == 413
    assert page.request.get(server).ok  # and goes on serving
