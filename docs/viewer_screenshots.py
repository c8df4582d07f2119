"""Regenerate the README's viewer screenshots: `python docs/viewer_screenshots.py RUN`.

Starts `flowsdf view RUN` on a free local port, opens it in Debian's headless Chromium (through
playwright, as the browser tests do), and saves one small PNG per tab under docs/images/: the
"Step the flow" tab as a 1280x900 window shows it (slider, latent, silhouette and ground truth on
the first screen), and the Reconstruct tab after a click on an example picture (a held-out shape of
the run's dataset, never trained on, on a white background: the page prepares it).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
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
    p.add_argument("--example", type=int, default=1, help="the example picture clicked (0-3; 1: on white)")
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
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("FLOWSDF_CHROMIUM", "/usr/bin/chromium"),
                                         args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.wait_for_selector("#silhouette img")
            page.get_by_role("radio", name=args.split).check()
            _wait_caption(page, f"{args.split} picture 0 ")
            _set_slider(page, "picture-index", args.index)
            _wait_caption(page, f"{args.split} picture {args.index} ")
            _set_slider(page, "step-slider", args.step)
            _wait_caption(page, f"Step {args.step} of")
            page.wait_for_timeout(2500)  # the panes fade in after the caption
            _save(page, args.out / "viewer_step.png", args.width, full_page=False)  # the first screen

            page.get_by_role("tab", name="Reconstruct").click()
            page.locator("#examples button.thumbnail-item").nth(args.example).click()
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


def _save(page, path: Path, width: int, full_page: bool = True) -> None:
    image = Image.open(io.BytesIO(page.screenshot(full_page=full_page))).convert("RGB")
    height = round(image.height * width / image.width)
    image.resize((width, height), Image.Resampling.LANCZOS).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
