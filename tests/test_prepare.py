"""Picture preparation: the foreground on any plain background, the training framing, the fit score."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from flowsdf.data import dataset, prepare
from flowsdf.data.dataset import DataConfig
from flowsdf.data.images import foreground_mask, load_image
from flowsdf.data.prepare import CENTRE_TOLERANCE, EXTENT_HIGH, EXTENT_LOW, EXTENT_MEDIAN, framing_of, prepare_picture
from flowsdf.errors import FlowSDFError
from flowsdf.render import cameras

ALBEDO = np.array([0.8, 0.45, 0.3])  # not white, so a lit side never matches a white background
TORUS = {"kind": "torus", "params": {"major": 0.5, "minor": 0.16}, "rotation": np.eye(3).tolist(),
         "translation": [0.0, 0.0, 0.0]}
BOX = {"kind": "rounded_box", "params": {"half": [0.45, 0.3, 0.25], "radius": 0.06},
       "rotation": [[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], "translation": [0.0, 0.0, 0.0]}
SPHERE = {"kind": "sphere", "params": {"radius": 0.5}, "rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, 0.0]}
CONE = {"kind": "cone", "params": {"radius": 0.45, "half_height": 0.5}, "rotation": np.eye(3).tolist(),
        "translation": [0.0, 0.0, 0.0]}


def render(spec: dict, size: int, position=(0.5, -0.4, 2.0), samples: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A training-style render: (size, size, 3) float in [0, 1] on black and its true mask (bool)."""
    cfg = DataConfig(image_size=size, gt_samples=samples)
    pos = np.array(position, float)
    c2w = cameras.look_at(pos / np.linalg.norm(pos) * cfg.cam_distance)
    img, mask, _ = dataset._render_view(spec, ALBEDO, cameras.intrinsics(size, cfg.fov_deg), c2w, cfg)
    return img / np.float32(255.0), mask.astype(bool)


@pytest.fixture(scope="module")
def renders() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # The torus (a ring around the y axis) is seen along y, so its silhouette has a real hole that must stay open.
    return {"torus": render(TORUS, 128, position=(0.4, 2.0, 0.7)), "box": render(BOX, 128, position=(1.5, -1.0, 0.8))}


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def backdrop(kind: str, size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) backgrounds a user's photo might have."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    if kind == "white":
        return np.full((size, size, 3), 0.98)
    if kind == "grey":
        return np.full((size, size, 3), 0.5)
    if kind == "black":
        return np.zeros((size, size, 3))
    if kind == "gradient":  # bright above, dark below, tilted, tinted
        t = np.clip(0.9 * y + 0.2 * x, 0, 1)[..., None]
        return np.array([0.9, 0.92, 0.97]) * (1 - t) + np.array([0.25, 0.22, 0.2]) * t
    if kind == "textured":  # fine grain (sigma 0.08 a pixel) on a mid-tone
        grain = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), (0.6, 0.6, 0)) * 0.14
        return np.clip(np.array([0.55, 0.5, 0.45]) + grain, 0, 1)
    raise ValueError(kind)


def picture(rgb: np.ndarray, mask: np.ndarray, kind: str) -> Image.Image:
    out = np.where(mask[..., None], rgb, backdrop(kind, mask.shape[0]))
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# foreground


@pytest.mark.parametrize("kind", ["white", "grey", "black", "gradient", "textured"])
@pytest.mark.parametrize("shape", ["torus", "box"])
def test_foreground_found_on_each_background(renders, shape, kind):
    rgb, true = renders[shape]
    p = prepare_picture(picture(rgb, true, kind), 64)
    assert iou(p.picture_mask, true) >= 0.95, (shape, kind, iou(p.picture_mask, true))
    want = {"white": "white", "grey": "grey", "black": "black", "gradient": "gradient", "textured": "textured"}[kind]
    assert p.background.kind == want
    assert p.fit > 0.3
    assert abs(p.coverage - true.mean()) < 0.02


@pytest.mark.parametrize("kind", ["white", "grey", "gradient"])
def test_foreground_found_through_jpeg_ringing(renders, kind, tmp_path):
    rgb, true = renders["box"]
    picture(rgb, true, kind).save(tmp_path / "photo.jpg", quality=85)
    assert iou(prepare_picture(tmp_path / "photo.jpg", 64).picture_mask, true) >= 0.95


def test_a_face_close_to_the_background_is_found_in_a_lossless_picture(tmp_path):
    """A teal face 0.096 from mid grey (4.8 lossy floors: under T_LOW) beside a bright one: a PNG
    has no ringing, so its floor is lower and the whole object is found; a JPEG keeps the floor."""
    size = 160
    rgb = np.full((size, size, 3), 0.5)
    true = np.zeros((size, size), bool)
    true[40:120, 40:80], true[40:120, 80:120] = True, True
    rgb[40:120, 40:80] = [0.443, 0.573, 0.529]  # the face the grey almost hides
    rgb[40:120, 80:120] = [0.72, 0.95, 0.88]
    pic = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))
    pic.save(tmp_path / "object.png")
    assert iou(prepare_picture(tmp_path / "object.png", 64).picture_mask, true) >= 0.99
    found = prepare.find_foreground(np.asarray(pic, np.float32) / 255, lossless=False).mask
    assert iou(found, true) < 0.6  # the lossy floor loses the face


def test_the_torus_keeps_its_hole(renders):
    rgb, true = renders["torus"]
    hole = ndimage.binary_fill_holes(true) & ~true
    assert hole.sum() > 50  # the view shows it
    for kind in ("black", "white"):
        found = prepare_picture(picture(rgb, true, kind), 64).picture_mask
        assert (found & hole).sum() < 0.05 * hole.sum()


def test_an_alpha_channel_is_the_mask(renders):
    rgb, true = renders["box"]
    rgba = np.concatenate([np.where(true[..., None], rgb, 1.0), true[..., None].astype(float)], axis=-1)  # white where clear
    p = prepare_picture(Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA"), 64)
    assert p.background.kind == "alpha"
    assert np.array_equal(p.picture_mask, true)


def test_background_fit_recovers_a_gradient_under_an_object():
    h, w = 90, 120
    y, x = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    bg = np.stack([0.5 + 0.2 * x + 0.1 * y * y, 0.4 - 0.15 * y, 0.6 + 0.05 * x * y], axis=-1)
    rgb = bg.copy()
    rgb[30:60, 40:80] = [0.1, 0.9, 0.2]
    rgb[:10, 55:65] = [0.9, 0.1, 0.1]  # a dark object touching the border: an outlier to the fit
    fitted, background, _ = prepare.fit_background(rgb.astype(np.float32))
    np.testing.assert_allclose(fitted, bg, atol=2e-3)
    assert background.kind == "gradient" and background.spread < 1e-3 and 0.9 < background.inliers < 1.0


# ---------------------------------------------------------------------------------------------
# framing


def disc_picture(w: int, h: int, cx: float, cy: float, r: float, kind: str = "white") -> tuple[Image.Image, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    shade = np.clip(0.1 + 0.8 * (1 - ((xx - cx + 0.4 * r) ** 2 + (yy - cy + 0.4 * r) ** 2) / (2 * r * r)), 0.1, 1)
    rgb = shade[..., None] * ALBEDO
    bg = {"white": np.full(3, 0.98), "grey": np.full(3, 0.5)}[kind]
    out = np.where(mask[..., None], rgb, bg)
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8)), mask


def box_of(mask) -> tuple[float, float, float]:
    """(extent in pixels, box centre x, box centre y) of a mask, pixel edges at integers."""
    x0, y0, x1, y1 = prepare.bounding_box(np.asarray(mask, bool))
    return max(x1 - x0, y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2


@pytest.mark.parametrize("w, h, cx, cy, r", [
    (200, 160, 150.0, 52.0, 20.0),  # small and off-centre
    (200, 160, 70.0, 100.0, 50.0),  # a training size, but on white and off-centre
    (160, 200, 60.0, 120.0, 90.0),  # too big, off-centre and cut by the border
])
def test_reframing_puts_the_object_in_the_training_framing(w, h, cx, cy, r):
    S = 64
    pic, mask = disc_picture(w, h, cx, cy, r)
    p = prepare_picture(pic, S)
    extent, x, y = box_of(p.mask.numpy())
    assert abs(extent - EXTENT_MEDIAN * S) <= 1.0, (extent, EXTENT_MEDIAN * S)
    assert abs(x - S / 2) <= 1.0 and abs(y - S / 2) <= 1.0, (x, y)
    # The crop box maps the picture's object box onto the model's, at `scale`.
    _, x0, y0 = box_of(mask)
    left, top, right, _ = p.crop_box
    assert abs((x0 - left) * p.scale - x) <= 1.0 and abs((y0 - top) * p.scale - y) <= 1.0
    assert abs(p.scale * (right - left) - S) < 1e-6
    assert ("touches the picture's border" in " ".join(p.notes)) == (cx + r >= w or cy + r >= h or cx < r or cy < r)
    # On black with soft edges: nothing outside the object's reach, no object pixel the model's
    # own foreground test (images.foreground_mask) would lose, no background colour let in.
    image, inside = p.image.numpy(), p.mask.numpy().astype(bool)
    reach = ndimage.binary_dilation(inside, iterations=1)
    assert np.abs(image[:, ~reach]).max() == 0
    assert foreground_mask(p.image[None])[0].numpy().astype(bool)[inside].all()
    assert image.max() <= ALBEDO.max() + 0.01  # the white (0.98) would show at the edges


@pytest.mark.parametrize("spec", [SPHERE, CONE], ids=["sphere", "cone"])
def test_a_training_render_is_given_to_the_model_as_it_is(spec):
    rgb, true = render(spec, 64, position=(1.5, 0.5, 0.8))
    f = framing_of(true)
    assert EXTENT_LOW <= f.extent <= EXTENT_HIGH and np.hypot(*f.box_offset) <= CENTRE_TOLERANCE
    pic = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))
    p = prepare_picture(pic, 64)
    assert np.array_equal(p.picture_mask, true)
    assert torch.equal(p.image, load_image(pic, 64)) and p.crop_box == (0.0, 0.0, 64.0, 64.0) and p.scale == 1.0
    assert p.fit > 0.9 and p.background.kind == "black" and p.notes == [
        "already on black in the training framing: given to the model as it is"]
    # On white it stays where it is, on black: only the background is replaced.
    white = prepare_picture(picture(rgb, true, "white"), 64)
    assert white.crop_box == p.crop_box and "kept in place" in " ".join(white.notes)
    assert box_of(white.mask.numpy()) == box_of(true) and iou(white.mask.numpy(), true) > 0.95
    assert white.image[:, white.mask == 0].max() <= p.image[:, white.mask == 0].max() + 0.05  # no white left
    # Moved off-centre it is re-framed: centred again, at the median size.
    moved = prepare_picture(Image.fromarray(np.roll(np.asarray(pic), 12, axis=1)), 64)
    extent, x, y = box_of(moved.mask.numpy())
    assert abs(x - 32) <= 1 and abs(y - 32) <= 1 and abs(extent - EXTENT_MEDIAN * 64) <= 1


def test_a_big_picture_is_analysed_small_and_reported_at_its_own_size():
    pic, mask = disc_picture(1200, 900, 800.0, 300.0, 150.0, kind="grey")
    p = prepare_picture(pic, 64)
    assert p.picture_mask.shape == (900, 1200) and iou(p.picture_mask, mask) > 0.97
    left, top, right, bottom = p.crop_box
    assert abs((left + right) / 2 - 800) < 3 and abs((top + bottom) / 2 - 300) < 3
    assert abs(box_of(p.mask.numpy())[0] - EXTENT_MEDIAN * 64) <= 1


# ---------------------------------------------------------------------------------------------
# both paths, and the score


def test_prepare_false_is_exactly_the_plain_reading(renders, tmp_path):
    rgb, true = renders["box"]
    pic = picture(rgb, true, "white").crop((0, 10, 128, 100))  # not square either
    pic.save(tmp_path / "white.png")
    Image.fromarray(np.full((20, 50), 40000, np.uint16)).save(tmp_path / "deep.png")
    for source in (tmp_path / "white.png", tmp_path / "deep.png"):
        plain = prepare_picture(source, 32, prepare=False)
        assert torch.equal(plain.image, load_image(source, 32)) and not plain.prepared
    plain = prepare_picture(tmp_path / "white.png", 32, prepare=False)
    done = prepare_picture(tmp_path / "white.png", 32)
    assert plain.factors["raw_background"] < 1 and plain.fit < done.fit
    json.dumps(done.summary())


def test_the_fit_score_marks_what_the_model_has_not_seen(renders):
    rgb, true = renders["box"]
    clean = prepare_picture(picture(rgb, true, "black"), 64)
    textured = prepare_picture(picture(rgb, true, "textured"), 64)
    assert clean.fit > 0.9
    assert textured.fit < clean.fit and textured.factors["background"] < 1
    cut = prepare_picture(Image.fromarray((np.where(true[..., None], rgb, 0.98)[:, 40:] * 255).astype(np.uint8)), 64)
    assert cut.factors["border"] <= prepare.BORDER_TOUCH and any("cut off" in n for n in cut.notes)
    speck, _ = disc_picture(400, 400, 200.0, 200.0, 3.0)
    tiny = prepare_picture(speck, 64)
    assert tiny.factors["resolution"] < 0.5 and tiny.fit < 0.5
    for p in (clean, textured, cut, tiny):
        assert 0.0 <= p.fit <= 1.0 and p.fit == pytest.approx(float(np.prod(list(p.factors.values()))))


def test_no_object_is_an_error_when_preparing_and_a_note_otherwise():
    blank = Image.new("RGB", (64, 48), (250, 250, 250))
    with pytest.raises(FlowSDFError, match="image: no object found on the white background"):
        prepare_picture(blank, 32)
    plain = prepare_picture(blank, 32, prepare=False)
    assert plain.fit == 0.0 and plain.picture_mask is None and "no object found" in plain.notes[0]
    assert torch.equal(plain.image, load_image(blank, 32))
