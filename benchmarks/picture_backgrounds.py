"""Test pictures the training data never has: rendered objects on other backgrounds and framings.

    python benchmarks/picture_backgrounds.py --out pictures/            # the pictures + pictures.json
    python benchmarks/picture_backgrounds.py --measure-framing          # prepare.py's framing constants

Each shape is drawn like the held-out renders (flowsdf.data.shapes' random shapes and albedos, a
random viewpoint at the training distance, the renders' light and Lambertian shading), but at
photo size (256 x 256 by default), anti-aliased (rendered at --supersample times the size, then
area-averaged), and framed four ways by the camera alone (zoom and principal point, so the true
mask is exact): centred as rendered, small (extent SMALL), large (extent LARGE) and off-centre.
Each framing is put on white, grey, gradient and textured backgrounds, and the centred one also on
black (the training background). pictures.json lists, for every picture, its file, its true mask
(PNG, 255 = object: at least half of the pixel's supersamples hit), the variant and the camera.
At the defaults one shape (4 renders, 17 pictures) took 2 min 20 s of CPU (5 min on a busy
2-core machine); --supersample 1 --samples 64 is about 8 times quicker.

--measure-framing renders the dataset prepare.py's constants come from (DataConfig(n_train_shapes=
200, n_heldout_shapes=2, novel_views=1, image_size=64), every view) in a temporary folder and prints
the statistics of its framing, and how the black renders fare through prepare_picture.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from flowsdf.data import dataset, prepare, shapes
from flowsdf.data.dataset import DataConfig
from flowsdf.render import cameras

SMALL, LARGE, OFF_CENTRE = 0.2, 0.9, 0.45  # extents (longer box side / picture side) of the framings
OFFSET = (0.2, -0.17)  # off-centre: the object's shift, in fractions of the side (x right, y down)
BACKGROUNDS = ("white", "grey", "gradient", "textured")


def background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) float background in [0, 1]."""
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    if kind == "black":
        return np.zeros((size, size, 3))
    if kind == "white":
        return np.broadcast_to([0.97, 0.97, 0.96], (size, size, 3)).copy()
    if kind == "grey":
        return np.broadcast_to([0.5, 0.5, 0.5], (size, size, 3)).copy()
    if kind == "gradient":  # a studio backdrop: light above, dark below, a little warmer to one side
        top, bottom = np.array([0.86, 0.88, 0.94]), np.array([0.30, 0.28, 0.27])
        t = np.clip(y + 0.15 * (x - 0.5), 0, 1)[..., None]
        return top * (1 - t) + bottom * t
    if kind == "textured":  # paper or cloth: fine grain on a slightly blotchy mid-tone
        base = np.array([0.58, 0.52, 0.45])
        blotch = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 16) * size / 16 * 0.05
        grain = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), (0.7, 0.7, 0)) * 0.12
        return np.clip(base + blotch[..., None] + grain, 0, 1)
    raise ValueError(kind)


def render(spec: dict, albedo: np.ndarray, c2w: np.ndarray, size: int, zoom: float, shift: tuple[float, float],
           supersample: int, samples: int, tile: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Colour (size, size, 3), coverage (size, size) in [0, 1], K and light of one view.

    The training camera (40-degree field of view) zoomed by `zoom` with its principal point moved by
    `shift` (fractions of the side): an exact pinhole picture, the object moved and scaled in it.
    Rendered by dataset._render_view in square tiles (each a camera whose principal point is moved
    by the tile's corner: the same rays), so memory stays that of one tile.
    """
    big = size * supersample
    K = cameras.intrinsics(big, DataConfig().fov_deg)
    K[0, 0] *= zoom
    K[1, 1] *= zoom
    K[0, 2] += shift[0] * big
    K[1, 2] += shift[1] * big
    img = np.zeros((big, big, 3), np.uint8)
    mask = np.zeros((big, big), np.uint8)
    for top in range(0, big, tile):
        for left in range(0, big, tile):
            K_tile = K.copy()
            K_tile[0, 2] -= left
            K_tile[1, 2] -= top
            cfg = DataConfig(image_size=tile, gt_samples=samples)
            i, m, light = dataset._render_view(spec, albedo, K_tile, c2w, cfg)  # (tile, tile, 3) uint8, (tile, tile)
            h, w = min(tile, big - top), min(tile, big - left)  # the last row and column of tiles overhang
            img[top:top + h, left:left + w], mask[top:top + h, left:left + w] = i[:h, :w], m[:h, :w]
    # Per pixel: the share of its supersamples that hit, and the mean colour of those hits.
    s = supersample
    hits = mask.reshape(size, s, size, s).astype(np.float64)
    coverage = hits.mean(axis=(1, 3))  # (size, size)
    colour = (img.reshape(size, s, size, s, 3) / 255.0 * hits[..., None]).sum(axis=(1, 3)) / np.maximum(
        hits.sum(axis=(1, 3)), 1)[..., None]
    K_out = K.copy()
    K_out[:2] /= s  # the size x size picture's camera: its pixel centres are the supersample blocks' centres
    return colour, coverage, K_out, light


def make_pictures(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    specs = shapes.random_shapes(args.shapes, args.seed, DataConfig().csg_fraction)
    entries = []
    for i, spec in enumerate(specs):
        albedo = rng.uniform(0.35, 1.0, size=3)  # as the dataset draws them
        c2w = cameras.look_at(cameras.random_viewpoints(rng, 1, DataConfig().cam_distance)[0])
        colour, coverage, K, light = render(spec, albedo, c2w, args.size, 1.0, (0.0, 0.0), args.supersample,
                                            args.samples)
        base = prepare.framing_of(coverage >= 0.5).extent
        framings = {"centred": (1.0, (0.0, 0.0)), "small": (SMALL / base, (0.0, 0.0)),
                    "large": (LARGE / base, (0.0, 0.0)), "offcentre": (OFF_CENTRE / base, OFFSET)}
        for framing, (zoom, shift) in framings.items():
            if framing != "centred":
                colour, coverage, K, light = render(spec, albedo, c2w, args.size, zoom, shift, args.supersample,
                                                    args.samples)
            mask = coverage >= 0.5
            mask_name = f"shape{i:02d}_{framing}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / mask_name)
            kinds = BACKGROUNDS + (("black",) if framing == "centred" else ())
            frame = prepare.framing_of(mask)
            for kind in kinds:
                bg = background(kind, args.size, rng)
                picture = coverage[..., None] * colour + (1 - coverage[..., None]) * bg
                name = f"shape{i:02d}_{framing}_{kind}.png"
                Image.fromarray((np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)).save(out / name)
                entries.append({
                    "image": name, "mask": mask_name, "shape": i, "family": shapes.family(spec),
                    "background": kind, "framing": framing,
                    "variant": f"{framing}_{kind}", "training_like": framing == "centred" and kind == "black",
                    "extent": frame.extent, "box_offset": list(frame.box_offset), "coverage": frame.coverage,
                    "spec": spec, "albedo": albedo.tolist(), "K": K.tolist(), "c2w": c2w.tolist(),
                    "light": light.tolist(),
                })
        print(f"shape {i}: {shapes.family(spec)}", file=sys.stderr)
    listing = {"size": args.size, "seed": args.seed, "supersample": args.supersample,
               "command": " ".join(sys.argv), "pictures": entries}
    (out / "pictures.json").write_text(json.dumps(listing, indent=1) + "\n")
    print(f"wrote {len(entries)} pictures and pictures.json to {out}")
    return 0


def measure_framing(args: argparse.Namespace) -> int:
    cfg = DataConfig(n_train_shapes=200, n_heldout_shapes=2, novel_views=1, image_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.framing_data) if args.framing_data else Path(tmp) / "framing"
        if not dataset.is_current(cfg, root):
            dataset.generate(cfg, root, progress=False)
        images, masks = [], []
        for split in dataset.SPLITS:
            with np.load(root / f"{split}.npz") as a:
                for group in ("input", "novel"):
                    images.append(a[f"{group}_images"].reshape(-1, 64, 64, 3))
                    masks.append(a[f"{group}_masks"].reshape(-1, 64, 64))
    images, masks = np.concatenate(images), np.concatenate(masks).astype(bool)
    stats = prepare.measure_framing(masks)
    # The black renders through the preparation: is the mask found, and how far does the object move?
    ious, moved, unchanged, shifted = [], [], 0, 0
    for img, mask in zip(images, masks):
        p = prepare.prepare_picture(Image.fromarray(img), 64)
        found = p.picture_mask
        ious.append((found & mask).sum() / max((found | mask).sum(), 1))
        before, after = prepare.framing_of(mask), prepare.framing_of(p.mask.numpy() > 0.5)
        moved.append(np.hypot(after.box_offset[0] - before.box_offset[0],
                              after.box_offset[1] - before.box_offset[1]) * 64)
        prepared = p.image.permute(1, 2, 0).numpy()
        unchanged += bool(np.array_equal(prepared, img / np.float32(255.0)))
        left, top, right, _ = p.crop_box
        if right - left == 64 and float(left).is_integer() and float(top).is_integer():  # kept its size
            moved_back = np.zeros_like(prepared)
            l, t = int(left), int(top)
            moved_back[max(-t, 0):64 - max(t, 0), max(-l, 0):64 - max(l, 0)] = \
                img[max(t, 0):64 + min(t, 0), max(l, 0):64 + min(l, 0)] / np.float32(255.0)
            shifted += bool(np.array_equal(prepared, moved_back))
    stats["renders_through_prepare"] = {
        "found_mask_iou": {"mean": float(np.mean(ious)), "min": float(np.min(ious))},
        "box_centre_moved_px": {"mean": float(np.mean(moved)), "median": float(np.median(moved)),
                                "max": float(np.max(moved)),
                                "p95": float(np.percentile(moved, 95))},
        "identical_images": unchanged, "identical_after_a_whole_pixel_shift": shifted, "n": len(images),
    }
    print(json.dumps(stats, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", help="folder for the pictures, their masks and pictures.json")
    parser.add_argument("--shapes", type=int, default=4, help="number of shapes (default 4)")
    parser.add_argument("--size", type=int, default=256, help="picture side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=2024, help="shapes, viewpoints, albedos, textures")
    parser.add_argument("--supersample", type=int, default=2, help="rays per pixel side (default 2)")
    parser.add_argument("--samples", type=int, default=128, help="samples per ray before bisection (default 128)")
    parser.add_argument("--measure-framing", action="store_true", help="print the training framing's statistics")
    parser.add_argument("--framing-data", help="with --measure-framing: a folder to keep (or reuse) the renders in")
    args = parser.parse_args(argv)
    if args.measure_framing:
        return measure_framing(args)
    if not args.out:
        parser.error("--out is required (or --measure-framing)")
    if args.shapes < 1 or args.size < 16 or args.supersample < 1:
        parser.error("--shapes must be >= 1, --size >= 16 and --supersample >= 1")
    return make_pictures(args)


if __name__ == "__main__":
    sys.exit(main())
