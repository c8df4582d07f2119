"""Mesh gallery of held-out shapes: ground truth beside the Stage-1 prediction, plain and refined.

Shows whether boxes come back with flat faces and corners. Held-out shapes are picked boxes
first (box, rounded box), then the others in order.

    PYTHONPATH=$PWD python benchmarks/quality_meshes.py RUN [--shapes 4] [--refine 20] [--out FILE.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from flowsdf import runs
from flowsdf.data import shapes
from flowsdf.figures.plots import mesh_gallery
from flowsdf.mesh.extract import extract_mesh
from flowsdf.metrics.shapes import gt_field
from flowsdf.pipeline import FlowSDF


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--model", default="cnn")
    p.add_argument("--shapes", type=int, default=4)
    p.add_argument("--refine", type=int, default=20)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = FlowSDF.from_run(args.run, args.model)
    data = runs.run_data(pipe.cfg, args.run, None)
    split = data.heldout
    fams = [shapes.family(s) for s in split.shapes]
    order = sorted(range(len(split)), key=lambda i: (fams[i] not in ("box", "rounded_box"), i))[: args.shapes]
    images = split.input.images[order, 0]  # (n, 3, S, S)
    predicted = {"predicted": pipe(images).codes[:, 0]}
    if args.refine > 0:
        predicted[f"refined {args.refine}"] = pipe(images, refine=args.refine).codes[:, 0]
    rows = []
    for j, i in enumerate(order):
        v, f = extract_mesh(gt_field(split.shapes[i]), resolution=args.resolution)
        rows.append({"label": f"held-out #{i} {fams[i]}: truth", "vertices": v, "faces": f})
        for name, codes in predicted.items():
            v, f = pipe.mesh(codes[j], resolution=args.resolution)
            rows.append({"label": f"held-out #{i}: {name}", "vertices": v, "faces": f})
    out = args.out or Path(args.run) / "eval" / "meshes_heldout.png"
    mesh_gallery(rows, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
