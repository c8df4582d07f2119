"""Where one picture leaves the shape open, do the flow's samples differ? A figure, and the guidance curve.

Part 1 (--run): for the first --candidates held-out pictures of a run's dataset (in the run's frame,
so the true shapes are where the model's codes put them), K flow samples each (seeds 0..K-1, as
`flowsdf reconstruct` draws them); the --pictures whose samples spread the most (mean pairwise code
distance over the mean code norm) are drawn one row each: the picture, the true shape, and the
samples, all from one oblique viewpoint so that differences along the camera axis show. The
rows therefore show the pictures the model itself finds ambiguous; the true shape's kind is in the
row's label, so one can check that these are the face-on boxes and end-on cylinders one expects.

Part 2 (--sweep W ...): the guidance curve on the same run: for each W, the held-out 3-D figures of
`flowsdf eval --k K` (flowsdf.metrics.samples.heldout_samples_3d: volumetric IoU best-of-K,
mean-of-K and of the mean code; each sample's input-view IoU against the mean code's) and the
samples' spread, without the rest of the evaluation; --shapes limits the held-out shapes;
--reference RUN scores that run's deterministic encoder on the same shapes by the same measure.
--temperature T (default: the run's flow.temperature) starts every sample from the source noise
scaled by T (both parts): wider samples, for the price of accuracy. --consistency C redraws a sample
whose input-view silhouette falls below C x the noiseless sample's (flowsdf.consistency). --repeats R
scores R disjoint sets of K samples per point: one set's best - mean moves by about 0.01 with the draw. --heldout-seed S scores fresh shapes instead
of the run's held-out split: --shapes of them, drawn by the run's data recipe from data seed S
(flowsdf.runs.fresh_heldout), to confirm a choice made by looking at the run's own held-out shapes.

    python benchmarks/ambiguous_samples.py --run runs/views-gen --out outputs/figures/ambiguous.png
    python benchmarks/ambiguous_samples.py --run runs/views-gen --sweep 1 1.5 2 3 5 --out outputs/figures/guidance.png
    python benchmarks/ambiguous_samples.py --run runs/views-gen --sweep 1 --heldout-seed 1 --shapes 40 --out outputs/fresh.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flowsdf import runs
from flowsdf.checkpoint import write_json
from flowsdf.data.dataset import ShapeSplit, Views
from flowsdf.data.shapes import family
from flowsdf.figures.plots import save_figure
from flowsdf.figures.preview import SAMPLE_COLOUR, draw_mesh
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh
from flowsdf.metrics.samples import heldout_samples_3d, relative_spread
from flowsdf.metrics.shapes import gt_field
from flowsdf.pipeline import FlowSDF

AZIMUTH, ELEVATION = 60.0, 25.0  # oblique to the view frame's input camera (+x axis, level)


def code_spread(codes: torch.Tensor) -> float:
    """Mean pairwise L2 distance of K codes (K, *latent), over their mean norm (0 = one shape)."""
    return float(relative_spread(codes[None])[0])


def ambiguous_figure(pipe: FlowSDF, images: torch.Tensor, specs: list, codes: list[torch.Tensor], spreads: list[float],
                     resolution: int, max_samples: int) -> Figure:
    """One row per picture: the picture, the true shape, then up to `max_samples` samples."""
    rows, cols = len(images), 2 + min(max_samples, len(codes[0]))
    fig = Figure(figsize=(1.6 * cols, 1.7 * rows))
    FigureCanvasAgg(fig)
    for r, (image, spec, sample_codes, spread) in enumerate(zip(images, specs, codes, spreads)):
        ax = fig.add_subplot(rows, cols, r * cols + 1)
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_axis_off()
        ax.set_title(f"{family(spec)}  spread {spread:.2f}", fontsize=7)
        ax = fig.add_subplot(rows, cols, r * cols + 2, projection="3d")
        draw_mesh(ax, to_trimesh(*extract_mesh(gt_field(spec), resolution=resolution)), AZIMUTH, ELEVATION)
        ax.set_title("truth", fontsize=7)
        for k, code in enumerate(sample_codes[: cols - 2]):
            ax = fig.add_subplot(rows, cols, r * cols + 3 + k, projection="3d")
            draw_mesh(ax, to_trimesh(*extract_mesh(pipe.field(code), resolution=resolution)), AZIMUTH, ELEVATION,
                      SAMPLE_COLOUR)
            ax.set_title(f"sample {k + 1}", fontsize=7)
    return fig


POINT_KEYS = ("best_of_k", "mean_of_k", "best_minus_mean", "mean_code", "code_spread", "input_iou_mean_of_k",
              "samples_within_90pct_of_mean_input_iou", "lowest_input_iou_ratio")


def sweep_point(pipe: FlowSDF, split, guidance: float, samples: int, repeats: int = 1) -> dict:
    """The held-out sampling figures of `flowsdf eval --k samples --guidance W`, and the spread, at
    the pipe's flow settings (temperature, consistency). Repeat r draws the samples from seeds
    r K .. r K + K - 1: the figures are their means, each repeat's figures are kept, and the spread
    of best - mean over repeats says how much of a difference is the draw."""
    predict = pipe.predictor(guidance=guidance)
    draws = []
    for r in range(repeats):
        h = heldout_samples_3d(predict, pipe.decoder, split, pipe.cfg.render, pipe.tau, samples, first_seed=r * samples)
        draws.append({"best_of_k": h["best_of_k"], "mean_of_k": h["mean_of_k"], "best_minus_mean": h["best_of_k"] - h["mean_of_k"],
                      "mean_code": h["mean_code_3d_iou"], "code_spread": h["code_spread"],
                      "input_iou_mean_of_k": h["input_iou_mean_of_k"],
                      "samples_within_90pct_of_mean_input_iou": h["samples_within_90pct_of_mean_input_iou"],
                      "lowest_input_iou_ratio": h["lowest_input_iou_ratio"]})
    f = pipe.cfg.flow
    point = {"guidance": guidance, "temperature": f.temperature, "consistency": f.consistency,
             "consistency_tries": f.consistency_tries, "k": samples, "shapes": len(split), "repeats": draws}
    point.update({key: float(np.mean([d[key] for d in draws])) for key in POINT_KEYS})
    point["lowest_input_iou_ratio"] = min(d["lowest_input_iou_ratio"] for d in draws)
    point["best_minus_mean_range"] = [min(d["best_minus_mean"] for d in draws), max(d["best_minus_mean"] for d in draws)]
    return point


def guidance_curve(points: list[dict]) -> Figure:
    """Held-out 3-D IoU (best-of-K, mean-of-K, mean code) and code spread against W."""
    w = [p["guidance"] for p in points]
    fig = Figure(figsize=(6.4, 2.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    for key, label in (("best_of_k", "best of K"), ("mean_of_k", "mean of K"), ("mean_code", "mean code")):
        ax.plot(w, [p[key] for p in points], marker="o", label=label)
    ax.set(xlabel="guidance W", ylabel="held-out 3-D IoU", title=f"accuracy (K = {points[0]['k']})")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(w, [p["code_spread"] for p in points], marker="o", color="C3")
    ax.set(xlabel="guidance W", ylabel="pairwise code distance / norm", title="diversity")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a run with a finished flow")
    p.add_argument("--sweep", type=float, nargs="+", help="W values: the guidance curve instead of the samples")
    p.add_argument("--shapes", type=int, help="--sweep: at most this many held-out shapes (default all)")
    p.add_argument("--reference", type=Path, help="--sweep: a run whose deterministic encoder (its 'cnn' model) is "
                                                   "scored on the same shapes by the same measure, K = 1")
    p.add_argument("--temperature", type=float, help="source-noise scale (default: the run's flow.temperature)")
    p.add_argument("--consistency", type=float, help="redraw samples below this share of the noiseless sample's input-view "
                                                     "IoU (default: the run's flow.consistency; 0 = off)")
    p.add_argument("--consistency-tries", type=int, help="draws per sample at most (default: the run's)")
    p.add_argument("--repeats", type=int, default=1, help="--sweep: score this many disjoint sets of K samples per "
                                                        "point (seeds r K .. r K + K - 1), report their mean and range")
    p.add_argument("--heldout-seed", type=int, help="--sweep: fresh shapes (--shapes of them, default 40) drawn by the run's "
                                                    "data recipe from this data seed, instead of its held-out split")
    p.add_argument("--unfinished", action="store_true", help="accept the run's latest, unfinished flow (e.g. Phase 1 alone)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--guidance", type=float, help="W for part 1 (default: the run's flow.guidance)")
    p.add_argument("--candidates", type=int, default=40, help="held-out pictures scanned for spread")
    p.add_argument("--pictures", type=int, default=4, help="rows drawn: the most spread")
    p.add_argument("--show", type=int, default=5, help="samples drawn per row")
    p.add_argument("--resolution", type=int, default=48, help="mesh resolution of the drawings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="PNG (and a JSON beside it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pipe = FlowSDF.from_run(args.run, "flow", "cpu", finished=not args.unfinished)
    pipe.set_sampling(args.temperature, args.consistency, args.consistency_tries)
    split = runs.heldout_split(pipe.cfg, args.run, args.heldout_seed, args.shapes)
    if args.sweep:
        n = min(len(split), args.shapes or len(split))
        first = lambda v: Views(*(x[:n] for x in (v.images, v.masks, v.K, v.c2w, v.light)))  # noqa: E731
        split = ShapeSplit(split.shapes[:n], split.albedo[:n], first(split.input), first(split.novel))
        result: dict = {"run": str(args.run), "heldout_seed": args.heldout_seed, "points": []}
        if args.reference:
            encoder = FlowSDF.from_run(args.reference, "cnn", "cpu")
            h = heldout_samples_3d(encoder.predictor(), encoder.decoder, split, encoder.cfg.render, encoder.tau, 1)
            result["reference"] = {"run": str(args.reference), "heldout_3d_iou": h["mean_of_k"],
                                   "input_iou": h["input_iou_mean_of_k"]}
            print(f"reference encoder {args.reference}: held-out 3-D IoU {h['mean_of_k']:.3f}, input-view IoU "
                  f"{h['input_iou_mean_of_k']:.3f}", flush=True)
        points = result["points"]
        for w in args.sweep:
            points.append(sweep_point(pipe, split, w, args.samples, args.repeats))
            pt = points[-1]
            low, high = pt["best_minus_mean_range"]
            print(f"W {w:g}, {n} held-out shapes, {args.repeats} x K = {pt['k']}: 3-D IoU best-of-K {pt['best_of_k']:.3f}, "
                  f"mean-of-K {pt['mean_of_k']:.3f} (best - mean {pt['best_minus_mean']:.3f}, {low:.3f} to {high:.3f}), "
                  f"mean code {pt['mean_code']:.3f}; spread {pt['code_spread']:.3f}; samples within 90 % of the mean's "
                  f"input IoU {pt['samples_within_90pct_of_mean_input_iou']:.3f} (lowest ratio "
                  f"{pt['lowest_input_iou_ratio']:.2f})", flush=True)
            write_json(args.out.with_suffix(".json"), result)
        save_figure(guidance_curve(points), args.out)
        print(f"wrote {args.out}")
        return
    w = pipe.cfg.flow.guidance if args.guidance is None else args.guidance
    n = min(args.candidates, len(split))
    images = split.input.images[:n, 0]  # (n, 3, S, S)
    with torch.no_grad():
        codes = [pipe(images[i:i + 1], samples=args.samples, guidance=w, prepare=False).codes[0] for i in range(n)]
    spreads = [code_spread(c) for c in codes]
    order = np.argsort(spreads)[::-1][: args.pictures]
    fig = ambiguous_figure(pipe, images[order.copy()], [split.shapes[i] for i in order], [codes[i] for i in order],
                           [spreads[i] for i in order], args.resolution, args.show)
    fig.suptitle(f"{args.run.name}: K = {args.samples} samples at W = {w:g}, the {len(order)} most spread of "
                 f"{n} held-out pictures", fontsize=8)
    save_figure(fig, args.out)
    chosen = [{"index": int(i), "kind": family(split.shapes[i]), "spread": spreads[i]} for i in order]
    write_json(args.out.with_suffix(".json"), {"guidance": w, "samples": args.samples,
                                               "median_spread": float(np.median(spreads)), "rows": chosen})
    print(f"median spread {np.median(spreads):.3f} over {n} pictures; drawn: "
          + ", ".join(f"{c['kind']} {c['spread']:.2f}" for c in chosen))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
