"""The README's reconstruction picture: held-out inputs, the true shape, flow samples, uncertainty.

One row per held-out picture: the input, the ground-truth shape (analytic SDF, never seen in
training), K = --samples flow samples' meshes from the input camera's direction, and the mean
code's mesh coloured by per-vertex uncertainty (the samples' surface spread) on the absolute scale
of flowsdf.mesh.uncertainty (0 .. SCALE_MAX object units), with its colour bar.

    python benchmarks/reconstruct_figure.py --run runs/reproduce-quick --out docs/images/reconstruct.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib import colormaps
from matplotlib.colors import Normalize

from flowsdf import runs
from flowsdf.figures.plots import save_figure
from flowsdf.figures.preview import camera_angles, draw_mesh
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh_coarse_to_fine
from flowsdf.mesh.uncertainty import CMAP
from flowsdf.metrics.shapes import gt_field
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import reconstruct_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--shapes", type=int, nargs="+", default=[0, 1, 2], help="held-out shape indices")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--unfinished", action="store_true")
    p.add_argument("--out", type=Path, default=Path("docs/images/reconstruct.png"))
    args = p.parse_args()
    pipe = FlowSDF.from_run(args.run, "flow", "cpu", finished=not args.unfinished)
    split = runs.run_data(pipe.cfg, args.run, None, progress=False).heldout
    cols = 3 + args.samples
    fig = plt.figure(figsize=(1.6 * cols + 0.4, 1.6 * len(args.shapes)))
    for r, i in enumerate(args.shapes):
        rec = reconstruct_image(pipe, split.input.images[i, 0], samples=args.samples, resolution=args.resolution)
        az, el = camera_angles(rec.camera[1].numpy())
        gt = to_trimesh(*extract_mesh_coarse_to_fine(gt_field(split.shapes[i]), resolution=args.resolution))
        ax = fig.add_subplot(len(args.shapes), cols, r * cols + 1)
        ax.imshow(rec.image.permute(1, 2, 0).numpy())
        ax.set_axis_off()
        panels = [("true shape", gt)] + [(f"sample {k + 1}", m) for k, m in enumerate(rec.meshes)]
        panels.append(("uncertainty", rec.mean_mesh))
        for c, (title, mesh) in enumerate(panels):
            ax = fig.add_subplot(len(args.shapes), cols, r * cols + 2 + c, projection="3d")
            draw_mesh(ax, mesh, az, el)
            if r == 0:
                ax.set_title(title, fontsize=8)
        if r == 0:
            fig.axes[0].set_title("input (held out)", fontsize=8)
        bar = plt.cm.ScalarMappable(norm=Normalize(0.0, rec.colour_max), cmap=colormaps[CMAP])
        cb = fig.colorbar(bar, ax=fig.axes[-1], fraction=0.05, pad=0.0, extend="max")
        cb.ax.tick_params(labelsize=6)
    fig.suptitle("flowsdf reconstruct: held-out pictures -> meshes (the samples' spread as colour)", fontsize=8)
    save_figure(fig, args.out, dpi=72)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
