"""Pictures read as they are: orientation, bit depth, modes, formats, frames, memory, folders."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from bad_pictures import declared_png
from PIL import EpsImagePlugin, Image, ImageDraw

from flowsdf.data import images
from flowsdf.data.images import (
    MAX_SIDE,
    find_images,
    foreground_mask,
    list_pictures,
    load_image,
    load_picture,
    open_checked,
    picture_array,
    read_picture,
    to_model_input,
)
from flowsdf.errors import FlowSDFError


def upright_picture(w: int = 96, h: int = 64) -> np.ndarray:
    """An asymmetric picture on black (H, W) uint8: a box low left, a disc low right, nothing above."""
    pic = Image.new("L", (w, h))
    draw = ImageDraw.Draw(pic)
    draw.rectangle((6, 34, 46, 60), fill=200)
    draw.ellipse((60, 36, 84, 60), fill=120)
    return np.asarray(pic)


def iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def full_mask(source) -> np.ndarray:
    rgb, _, _ = picture_array(open_checked(source))
    return rgb.max(axis=-1) > 0.1  # objects are >= 0.47 here; JPEG's ringing on black stays below


def old_to_model_input(image: Image.Image, size: int) -> torch.Tensor:
    """The reading before this change (pad to a side x side canvas, then resize): the reference."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    square = square.resize((size, size), Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------
# orientation and bit depth


# Pillow's exif_transpose undoes orientation 3 with ROTATE_180, 6 with ROTATE_270, 8 with ROTATE_90:
# the stored pixels are the upright picture turned the other way.
@pytest.mark.parametrize("orientation, stored_as, fmt", [
    (3, Image.Transpose.ROTATE_180, "JPEG"), (6, Image.Transpose.ROTATE_90, "JPEG"),
    (8, Image.Transpose.ROTATE_270, "JPEG"), (6, Image.Transpose.ROTATE_90, "PNG"),
])
def test_exif_orientation_is_read_upright(tmp_path, orientation, stored_as, fmt):
    upright = Image.fromarray(upright_picture()).convert("RGB")
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    upright.save(tmp_path / f"upright{suffix}", fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(stored_as)
    assert stored.size != upright.size or orientation == 3
    stored.save(tmp_path / f"turned{suffix}", fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))

    image, info = read_picture(tmp_path / f"turned{suffix}")
    assert image.size == upright.size and info.size == upright.size
    assert any(f"EXIF orientation ({orientation})" in n for n in info.notes)
    assert iou(full_mask(tmp_path / f"turned{suffix}"), full_mask(tmp_path / f"upright{suffix}")) >= 0.99
    a, b = load_image(tmp_path / f"turned{suffix}", 32), load_image(tmp_path / f"upright{suffix}", 32)
    assert iou(foreground_mask(a[None])[0], foreground_mask(b[None])[0]) >= 0.99
    # Without the turn the two would not even have the same shape of picture or mask.
    assert iou(np.asarray(stored.convert("L").resize(upright.size)) > 25, upright_picture() > 25) < 0.3


def sixteen_bit_twin(u8: np.ndarray) -> np.ndarray:
    """The 8-bit picture at 16 bits (v * 257), its black lifted to 200/65535: still black to 8 bits."""
    return np.maximum(u8.astype(np.uint16) * 257, 200).astype(np.uint16)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    u8 = upright_picture()
    Image.fromarray(u8).save(tmp_path / "eight.png")
    Image.fromarray(sixteen_bit_twin(u8)).save(tmp_path / "sixteen.png")  # Pillow writes I;16 as a 16-bit PNG
    image, info = read_picture(tmp_path / "sixteen.png")
    assert info.mode == "I;16"
    rgb, alpha, _ = picture_array(image)
    assert alpha is None
    np.testing.assert_allclose(rgb[..., 0], u8 / 255.0, atol=1 / 255)
    assert iou(full_mask(tmp_path / "sixteen.png"), full_mask(tmp_path / "eight.png")) >= 0.99
    a, b = load_image(tmp_path / "sixteen.png", 64), load_image(tmp_path / "eight.png", 64)
    assert iou(foreground_mask(a[None])[0], foreground_mask(b[None])[0]) >= 0.99
    assert (a - b).abs().max() <= 1.5 / 255
    # What convert("RGB") gives instead: 200 (of 65535) read as 200 of 255, the object clipped to white.
    naive = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    assert naive.max() == 1.0 and naive.min() > 0.7
    assert iou(naive.max(axis=-1) > 0.02, u8 > 5) < 0.6


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_modes_in_memory(mode):
    u8 = upright_picture()
    u16 = sixteen_bit_twin(u8)
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (u8.shape[1], u8.shape[0]), u16.astype(">u2").tobytes())
    elif mode == "I":
        image = Image.fromarray(u16.astype(np.int32), "I")
    elif mode == "F":
        image = Image.fromarray(u16.astype(np.float32) / 65535.0, "F")
    else:
        image = Image.fromarray(u16)
    assert image.mode == mode
    got = to_model_input(image, 48)
    want = to_model_input(Image.fromarray(u8), 48)
    assert (got - want).abs().max() <= 1.5 / 255
    assert iou(foreground_mask(got[None])[0], foreground_mask(want[None])[0]) >= 0.99


def test_float_values_outside_the_unit_range_are_clipped_with_a_note():
    image = Image.fromarray(np.array([[-0.5, 0.25], [0.5, 3.0]], np.float32), "F")
    tensor, info = load_picture(image, 2)
    torch.testing.assert_close(tensor[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert any("clipped" in n for n in info.notes)


def _expected(rgb: list, size: int = 8) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, size, size)


@pytest.mark.parametrize("make, want", [
    (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), [1.0, 0.0, 0.0]),  # red in CMYK
    (lambda: Image.new("LA", (8, 8), (200, 0)), [0.0, 0.0, 0.0]),  # transparent: the black background
    (lambda: Image.new("LA", (8, 8), (200, 255)), [200 / 255] * 3),
    (lambda: Image.new("1", (8, 8), 1), [1.0, 1.0, 1.0]),
    (lambda: Image.new("La", (8, 8), (100, 128)), [100 / 255] * 3),  # premultiplied: 100 is what shows on black
])
def test_other_modes_become_rgb(make, want):
    got = to_model_input(make(), 8)
    torch.testing.assert_close(got, _expected(want), atol=1.5 / 255, rtol=0)


def test_palette_with_transparency_and_cmyk_jpeg_files(tmp_path):
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 0, 255, 0])
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    torch.testing.assert_close(load_image(tmp_path / "p.png", 8), torch.zeros(3, 8, 8))
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert read_picture(tmp_path / "cmyk.jpg")[1].mode == "CMYK"
    got = load_image(tmp_path / "cmyk.jpg", 8)
    torch.testing.assert_close(got, _expected([1.0, 0.0, 0.0]), atol=4 / 255, rtol=0)


# ---------------------------------------------------------------------------------------------
# formats and frames


EPS = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


def test_postscript_named_png_never_reaches_the_eps_plugin(tmp_path, monkeypatch):
    path = tmp_path / "drawing.png"
    path.write_text(EPS)
    calls = []
    real_open = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: calls.append("open") or real_open(self))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append("ghostscript"))
    with pytest.raises(FlowSDFError) as e:
        open_checked(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "only PNG, JPEG and WebP" in msg
    assert calls == []
    # The patch is live: Pillow left to itself takes the file for EPS.
    with Image.open(path) as im:
        assert im.format == "EPS" and calls == ["open"]


def test_other_formats_are_refused_by_name(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.gif")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png", "BMP")
    for name in ("a.gif", "b.png"):
        with pytest.raises(FlowSDFError, match="not a picture flowsdf reads"):
            open_checked(tmp_path / name)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "c.webp", lossless=True)
    assert read_picture(tmp_path / "c.webp")[1].format == "WEBP"


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("WEBP", ".webp")])
def test_animated_pictures_give_their_first_frame_and_say_so(tmp_path, fmt, suffix):
    frames = [Image.new("RGB", (16, 16), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(tmp_path / f"anim{suffix}", fmt, save_all=True, append_images=frames[1:], duration=100, **extra)
    tensor, info = load_picture(tmp_path / f"anim{suffix}", 8)
    assert info.frames == 3 and info.format == fmt
    assert info.notes == ["3 frames (an animation or a multi-picture file): the first frame is used"]
    torch.testing.assert_close(tensor, _expected([200 / 255, 0.0, 0.0]), atol=1 / 255, rtol=0)
    json.dumps(info.to_json())  # fit for a summary.json


# ---------------------------------------------------------------------------------------------
# size and memory


def test_a_side_over_the_limit_is_refused_from_the_header(tmp_path):
    path = declared_png(tmp_path / "strip.png", MAX_SIDE + 1, 2)  # few pixels, one long side
    with pytest.raises(FlowSDFError, match=f"over the limit of {MAX_SIDE:,}"):
        open_checked(path)


# Run in a fresh interpreter: ru_maxrss is the process's peak, and a pytest process's peak is
# already set by whatever ran before. tracemalloc sees numpy's buffers but not Pillow's (its own
# malloc), so the peak resident size is the measure that matters; an address-space cap of 1 GiB
# above the start turns a regression (a 60,000-pixel square is 10.8 GB) into a MemoryError, not a
# machine that swaps.
MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    from PIL import Image
    from flowsdf.data.images import load_image
    from flowsdf.errors import FlowSDFError

    tall, wide, warm = sys.argv[1:4]
    load_image(warm, 64)  # plugins, lazy imports and first allocations before the baseline
    vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    out = {}
    for name, path in (("tall", tall), ("wide", wide)):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tracemalloc.start()
        try:
            x = load_image(path, 64)
            out[name] = {"shape": list(x.shape), "nonzero": float(x.amax(dim=0).sum())}
        except FlowSDFError as e:
            out[name] = {"error": str(e)}
        except MemoryError:
            out[name] = {"error": "MemoryError"}
        out[name]["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name]["rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss in Linux units")
def test_memory_is_bounded_by_the_longest_side(tmp_path):
    Image.new("L", (1, 60_000), 255).save(tmp_path / "tall.png")  # 60,000 pixels: far under MAX_PIXELS
    strip = np.zeros((3, 12_000, 3), np.uint8)
    strip[:, 5_000:7_000] = 180  # grey in the middle third
    Image.fromarray(strip).save(tmp_path / "wide.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "warm.png")
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "tall.png"), str(tmp_path / "wide.png"),
                          str(tmp_path / "warm.png")], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    limit = 50 * 2**20
    assert f"a side of 60,000 pixels (1x60000) is over the limit of {MAX_SIDE:,}" in out["tall"]["error"]
    assert out["wide"]["shape"] == [3, 64, 64] and out["wide"]["nonzero"] > 0
    for name in ("tall", "wide"):
        assert out[name]["traced_peak"] < limit and out[name]["rss_growth"] < limit, out


def test_padding_at_the_model_size_equals_the_padded_canvas(monkeypatch):
    """The fast path against the kept reference: exactly the old pad-then-resize, bands and all."""
    monkeypatch.setattr(images, "_BAND_PIXELS", 1000)  # many bands even for small pictures
    rng = np.random.default_rng(0)
    for w, h, size in [(60, 30, 16), (30, 60, 16), (7, 200, 32), (200, 7, 32), (10, 5, 64), (5, 10, 64),
                       (123, 77, 32), (77, 123, 32), (33, 34, 32), (1, 90, 16)]:
        pic = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(to_model_input(pic, size), old_to_model_input(pic, size)), (w, h, size)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 50, 4), dtype=np.uint8), "RGBA")
    assert torch.equal(to_model_input(rgba, 16), old_to_model_input(rgba, 16))


# ---------------------------------------------------------------------------------------------
# folders


def test_folders_list_pictures_and_the_files_they_skip(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "c.webp"):
        Image.new("RGB", (4, 4)).save(folder / name, "JPEG" if name.endswith("JPG") else None)
    (folder / "notes.txt").write_text("x")
    (folder / "scan.tiff").write_bytes(b"II*\x00")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.md").write_text("x")
    found = list_pictures([folder, tmp_path / "other", tmp_path / "missing.png"])
    assert [p.name for p in found.files] == ["a.png", "b.JPG", "c.webp"]
    assert [p.name for p in found.skipped] == ["notes.txt", "scan.tiff", "readme.md"]  # subfolders not searched
    assert len(found.problems) == 2
    assert "no PNG, JPEG or WebP picture (1 other file(s) skipped)" in found.problems[0]
    assert "no such file" in found.problems[1]
    assert find_images([folder, tmp_path / "other"]) == (found.files, found.problems[:1])
