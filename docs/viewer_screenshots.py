"""Regenerate the README's viewer screenshots: `python docs/viewer_screenshots.py RUN`.

Starts `flowsdf view RUN` on a free local port, opens it in Debian's headless Chromium (through
playwright, as the browser tests do), and saves one small PNG per tab under docs/images/. The
Reconstruct tab is shown for a held-out picture of the run's dataset (never trained on).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    p.add_argument("--step", type=int, default=3, help="Euler step shown in the first tab")
    p.add_argument("--split", default="held-out")
    p.add_argument("--index", type=int, default=1)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--width", type=int, default=960, help="width of the saved PNGs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "flowsdf", "view", str(args.run), "--port", str(port)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_until_served(url, server)
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("FLOWSDF_CHROMIUM", "/usr/bin/chromium"),
                                         args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.wait_for_selector("#silhouette img")
            page.get_by_role("radio", name=args.split).check()
            _wait_caption(page, f"{args.split} picture 0 ")
            _set_slider(page, "picture-index", args.index)
            _wait_caption(page, f"{args.split} picture {args.index} ")
            # The picture as a file, for the Reconstruct tab: the gallery thumbnail is the dataset image.
            thumb = page.locator("#gallery button.thumbnail-item img").nth(args.index).get_attribute("src")
            picture = Path(tmp) / f"{args.split}-{args.index}.png"
            Image.open(io.BytesIO(page.request.get(thumb).body())).convert("RGB").save(picture)
            _set_slider(page, "step-slider", args.step)
            _wait_caption(page, f"Step {args.step} of")
            _save(page, args.out / "viewer_step.png", args.width)

            page.get_by_role("tab", name="Reconstruct").click()
            page.locator("#recon-upload input[type='file']").set_input_files(str(picture))
            _set_slider(page, "samples", args.samples)
            _set_slider(page, "resolution", args.resolution)
            page.locator("#reconstruct").click()
            page.wait_for_selector("#download-glb", state="visible")
            _wait_for_3d(page)
            _save(page, args.out / "viewer_reconstruct.png", args.width)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_until_served(url: str, server: subprocess.Popen) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(1200):
        if server.poll() is not None:
            sys.exit(f"the viewer exited with status {server.returncode}")
        try:
            with opener.open(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("the viewer did not start serving")


def _wait_caption(page, text: str) -> None:
    page.wait_for_function("(t) => document.querySelector('#step-caption')?.innerText.includes(t)", arg=text)


def _set_slider(page, elem: str, value: int) -> None:
    box = page.locator(f"#{elem} input[data-testid='number-input']")
    box.fill(str(value))
    box.press("Enter")


def _wait_for_3d(page) -> None:
    for _ in range(600):
        shot = np.asarray(Image.open(io.BytesIO(page.locator("#model3d canvas").screenshot())).convert("RGB"))
        if (shot.min(axis=2) < 200).mean() > 0.01:
            time.sleep(1.0)  # let the view settle
            return
        time.sleep(0.5)
    sys.exit("the 3-D view stayed empty")


def _save(page, path: Path, width: int) -> None:
    image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    height = round(image.height * width / image.width)
    image.resize((width, height), Image.Resampling.LANCZOS).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
