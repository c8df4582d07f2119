"""How well a trained run reconstructs pictures the training data never has, with and without preparation.

    python benchmarks/picture_backgrounds.py --out pictures/ --shapes 8            # the pictures, once
    python benchmarks/picture_accuracy.py --run runs/reproduce-quick --pictures pictures/ [--out FILE.json]

For every picture of pictures.json (one object on black, white, grey, gradient and textured
backgrounds; centred, small, large and off-centre; with its true mask) the picture goes through
`flowsdf.reconstruct.reconstruct_image` twice: prepared (the object found, re-framed like the
training renders, put on black: the default) and with prepare=False (the picture as it is, padded
to a square: the behaviour before preparation). What is measured, in the model's input frame of
each path (the true mask is resampled through the same crop as the picture):

- iou: the silhouette IoU of the reconstruction, seen from the camera the pipeline chose (searched
  against the foreground it found), with the picture's TRUE foreground. What a user gets.
- iou_best_view: the same, from the dataset-like view that best matches the true foreground (the
  shape's own quality, whatever the camera search made of the found mask).
- score / low: the pipeline's verdict (flowsdf.reconstruct.Verdict) and whether it warned.

The acceptance test: per shape, the black centred picture must not lose IoU by being prepared, and
every other picture, prepared, must come within --tolerance (0.05) of that shape's black centred
picture. Prints a table per variant and the check; writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flowsdf.data import prepare as preparation
from flowsdf.data.prepare import _resampled
from flowsdf.device import device_name
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.pipeline import FlowSDF
from flowsdf.provenance import provenance
from flowsdf.reconstruct import reconstruct_image


def model_frame_mask(mask: np.ndarray, crop_box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """A picture's true mask (H, W) bool through the crop the picture was given (left, top, right,
    bottom in picture pixels, as flowsdf.data.prepare.Prepared.crop_box), at size x size: bool."""
    left, top, right, _ = crop_box
    planes = mask.astype(np.float32)[None]  # (1, H, W)
    return _resampled(planes, left, top, right - left, size)[0] >= 0.5  # (S, S)


def measure(pipe: FlowSDF, picture: Path, true_mask: np.ndarray, prepare: bool, args) -> dict:
    start = time.perf_counter()
    rec = reconstruct_image(pipe, picture, samples=args.samples, seed=args.seed, resolution=args.resolution,
                            prepare=prepare)
    seconds = time.perf_counter() - start
    truth = torch.from_numpy(model_frame_mask(true_mask, rec.prepared.crop_box, pipe.image_size)).float()  # (S, S)
    code = rec.codes.mean(0)  # (*latent)
    iou = float(silhouette_iou(rec.silhouette[None], truth[None])[0])
    best = pipe.input_camera(code, truth, rec.mesh)
    sil = pipe.silhouettes(code[None], best.K[None], best.c2w[None])[0].cpu()  # (S, S)
    return {"iou": iou, "iou_best_view": float(silhouette_iou(sil[None], truth[None])[0]),
            "iou_found_mask": rec.camera_iou, "score": rec.verdict.score, "fit": rec.verdict.fit,
            "low": rec.verdict.low, "background_found": rec.prepared.background.kind,
            "truth_pixels": int(truth.sum()), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained run folder")
    p.add_argument("--pictures", type=Path, required=True, help="a folder written by benchmarks/picture_backgrounds.py")
    p.add_argument("--model", default="flow", choices=("flow", "cnn"))
    p.add_argument("--samples", type=int, default=1, help="K (default 1: the IoU of one sample's shape)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=64, help="mesh grid for the camera search (default 64)")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed IoU loss against black centred")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--limit", type=int, help="only the first N pictures (a quick look)")
    p.add_argument("--variants", nargs="+", help="only these variants (e.g. small_white centred_black)")
    p.add_argument("--prepared-only", action="store_true", help="skip the pictures as they are (experiments)")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/picture_accuracy.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    listing = json.loads((args.pictures / "pictures.json").read_text())
    entries = [e for e in listing["pictures"] if not args.variants or e["variant"] in args.variants][: args.limit]
    pipe = FlowSDF.from_run(args.run, args.model, "cpu")
    rows = []
    for i, e in enumerate(entries):
        mask = np.asarray(Image.open(args.pictures / e["mask"])) > 127  # (H, W)
        row = {k: e[k] for k in ("image", "shape", "family", "background", "framing", "variant", "training_like")}
        for name, prepare in (("prepared", True), ("raw", False)):
            if prepare or not args.prepared_only:
                row[name] = measure(pipe, args.pictures / e["image"], mask, prepare, args)
        rows.append(row)
        raw = f"{row['raw']['iou']:.3f}" if "raw" in row else "-"
        print(f"[{i + 1}/{len(entries)}] {e['image']}: IoU prepared {row['prepared']['iou']:.3f} "
              f"(score {row['prepared']['score']:.2f}), raw {raw}", file=sys.stderr)
    summary = summarise(rows, args.tolerance)
    record = {"run": str(args.run), "model": args.model, "samples": args.samples, "seed": args.seed,
              "extent_median": preparation.EXTENT_MEDIAN,
              "resolution": args.resolution, "pictures": str(args.pictures), "tolerance": args.tolerance,
              "device": device_name("cpu"), "provenance": provenance("cpu"), "command": " ".join(sys.argv),
              **summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print_table(summary, args.tolerance)
    print(f"wrote {args.out}")
    return 0 if summary["check"]["passed"] else 1


def summarise(rows: list[dict], tolerance: float) -> dict:
    """Per variant means, and the acceptance check against each shape's black centred picture."""
    reference = {r["shape"]: r for r in rows if r["training_like"]}
    variants: dict[str, dict] = {}
    for r in rows:
        v = variants.setdefault(r["variant"], {"n": 0, "rows": []})
        v["n"] += 1
        v["rows"].append(r)
    table = {}
    for name, v in variants.items():
        rs = v["rows"]

        def mean(path: str, key: str, rs: list = rs) -> float:
            return float(np.mean([x[path][key] for x in rs])) if all(path in x for x in rs) else float("nan")

        gaps = [reference[x["shape"]]["prepared"]["iou"] - x["prepared"]["iou"] for x in rs if x["shape"] in reference]
        table[name] = {
            "n": v["n"], "iou_prepared": mean("prepared", "iou"), "iou_raw": mean("raw", "iou"),
            "iou_best_view_prepared": mean("prepared", "iou_best_view"), "iou_best_view_raw": mean("raw", "iou_best_view"),
            "score_prepared": mean("prepared", "score"), "score_raw": mean("raw", "score"),
            "low_prepared": sum(x["prepared"]["low"] for x in rs), "low_raw": sum(x["raw"]["low"] for x in rs if "raw" in x),
            "gap_to_black_centred_mean": float(np.mean(gaps)) if gaps else None,
            "gap_to_black_centred_max": float(np.max(gaps)) if gaps else None,
            "within_tolerance": int(sum(g <= tolerance for g in gaps)),
        }
    failures, outside = [], 0
    for r in rows:
        ref = reference.get(r["shape"])
        if ref is None:
            continue
        if r["training_like"]:
            if "raw" in r and r["prepared"]["iou"] < r["raw"]["iou"] - 1e-6:
                failures.append(f"{r['image']}: preparing a black centred picture lowered its IoU "
                                f"({r['raw']['iou']:.3f} -> {r['prepared']['iou']:.3f})")
        elif ref["prepared"]["iou"] - r["prepared"]["iou"] > tolerance:
            outside += 1
            failures.append(f"{r['image']}: IoU {r['prepared']['iou']:.3f}, {ref['prepared']['iou'] - r['prepared']['iou']:.3f} "
                            f"below its black centred picture ({ref['prepared']['iou']:.3f})")
    others = [r for r in rows if not r["training_like"] and r["shape"] in reference]
    return {"variants": table, "check": {"passed": not failures, "failures": failures,
                                         "pictures_within_tolerance": len(others) - outside,
                                         "pictures_compared": len(others)}}


def print_table(summary: dict, tolerance: float) -> None:
    print("| variant | n | IoU prepared | IoU raw | best-view IoU prepared / raw | gap to black centred (mean / max) "
          f"| within {tolerance} | score prepared / raw | warned prepared / raw |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, v in sorted(summary["variants"].items()):
        gap = "-" if v["gap_to_black_centred_mean"] is None else (
            f"{v['gap_to_black_centred_mean']:+.3f} / {v['gap_to_black_centred_max']:+.3f}")
        print(f"| {name} | {v['n']} | {v['iou_prepared']:.3f} | {v['iou_raw']:.3f} | "
              f"{v['iou_best_view_prepared']:.3f} / {v['iou_best_view_raw']:.3f} | {gap} | "
              f"{v['within_tolerance']}/{v['n']} | {v['score_prepared']:.2f} / {v['score_raw']:.2f} | "
              f"{v['low_prepared']} / {v['low_raw']} |")
    c = summary["check"]
    print(f"\nacceptance: {'PASSED' if c['passed'] else 'NOT MET'}; "
          f"{c['pictures_within_tolerance']}/{c['pictures_compared']} pictures within {tolerance} of their shape's "
          "black centred picture")
    for f in c["failures"]:
        print(f"  {f}")


if __name__ == "__main__":
    sys.exit(main())
