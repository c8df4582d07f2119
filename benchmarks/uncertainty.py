"""Is the flow's per-vertex uncertainty higher where its shape is wrong? Held-out shapes.

For each held-out picture of a run's dataset: K flow samples (seeds 0..K-1), the mesh of their
mean code (coarse-to-fine, --resolution), the per-vertex std of the K decoded fields at its vertices
(flowsdf.mesh.uncertainty), and the vertex's error: its distance to the true surface, |analytic sdf|
at the vertex (flowsdf.metrics.shapes.gt_field; the codes live in the dataset's world frame, as the
shapes do). Reported per shape and as a mean: the Spearman rank correlation between std and error;
as a trivial baseline, the correlation between the vertex's distance from the origin and the error
(an uncertainty that only says "far out is harder" would match it); the spread of the samples
(mean pairwise code distance vs mean code norm) and the std in voxels.

--temperatures scales the source noise (sigma x T) to ask whether wider sampling would make the
spread informative; T = 1 is the model as trained and used by `flowsdf reconstruct`.

    python benchmarks/uncertainty.py --run runs/reproduce-quick [--samples 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from flowsdf import runs
from flowsdf.device import device_name
from flowsdf.flow import sample_latents
from flowsdf.mesh.extract import extract_mesh_coarse_to_fine
from flowsdf.mesh.uncertainty import field_values, vertex_std
from flowsdf.metrics.shapes import gt_field
from flowsdf.pipeline import FlowSDF


@torch.no_grad()
def sample_codes(pipe: FlowSDF, image: torch.Tensor, samples: int, temperature: float) -> torch.Tensor:
    """K codes (K, D) of one picture, seeds 0..K-1, the source noise scaled by `temperature`."""
    cond = pipe.conditioner(pipe.load_images(image)[0]).repeat(samples, 1)  # (K, C)
    return sample_latents(pipe.velocity, cond, pipe.latent_dim, pipe.sigma * temperature, pipe.cfg.flow.steps,
                          seed=list(range(samples)))  # (K, D)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def shape_row(pipe: FlowSDF, image: torch.Tensor, spec, samples: int, temperature: float, resolution: int) -> dict:
    codes = sample_codes(pipe, image, samples, temperature)  # (K, D)
    mean = codes.mean(dim=0)  # (D,)
    vertices, _ = extract_mesh_coarse_to_fine(pipe.field(mean), resolution=resolution)
    pair = torch.cdist(codes, codes)  # (K, K)
    row = {"code_pairwise_l2": float(pair.sum() / (samples * (samples - 1))), "code_norm": float(codes.norm(dim=1).mean()),
           "vertices": len(vertices)}
    if len(vertices) == 0:
        return {**row, "spearman_std_error": None, "spearman_radius_error": None}
    std = vertex_std([pipe.field(c) for c in codes], vertices)  # (V,)
    error = np.abs(field_values([gt_field(spec)], vertices)[0])  # (V,) distance to the true surface
    radius = np.linalg.norm(vertices, axis=1)  # (V,)
    voxel = 2.0 / (resolution - 1)
    return {**row, "spearman_std_error": rank_correlation(std, error),
            "spearman_radius_error": rank_correlation(radius, error),
            "std_median_voxels": float(np.median(std) / voxel), "std_max_voxels": float(std.max() / voxel),
            "error_median_voxels": float(np.median(error) / voxel)}


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--shapes", type=int, help="at most this many held-out shapes (default all)")
    p.add_argument("--unfinished", action="store_true", help="accept the run's latest, unfinished flow")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/uncertainty.json"))
    args = p.parse_args()
    pipe = FlowSDF.from_run(args.run, "flow", "cpu", finished=not args.unfinished)
    data = runs.run_data(pipe.cfg, args.run, None, progress=False)
    split = data.heldout
    n = min(len(split), args.shapes or len(split))
    result = {"run": str(args.run), "stages": list(pipe.stages), "samples": args.samples, "resolution": args.resolution,
              "device": device_name("cpu"), "sigma": pipe.sigma, "by_temperature": {}}
    for t in args.temperatures:
        rows = [shape_row(pipe, split.input.images[i, 0], split.shapes[i], args.samples, t, args.resolution)
                for i in range(n)]
        summary = {k: mean_of(rows, k) for k in ("spearman_std_error", "spearman_radius_error", "code_pairwise_l2",
                                                 "code_norm", "std_median_voxels", "error_median_voxels")}
        summary["positive_shapes"] = sum(1 for r in rows if (r["spearman_std_error"] or 0) > 0)
        summary["shapes_with_mesh"] = sum(1 for r in rows if r["vertices"] > 0)
        result["by_temperature"][str(t)] = {"mean": summary, "per_shape": rows}
        print(f"temperature {t:g} (sigma {pipe.sigma * t:.4f}), {n} held-out shapes, K = {args.samples}:")
        for i, r in enumerate(rows):
            s, b = r["spearman_std_error"], r["spearman_radius_error"]
            print(f"  shape {i:2d}: spearman(std, error) {s if s is None else round(s, 3)!s:>6}, baseline "
                  f"spearman(radius, error) {b if b is None else round(b, 3)!s:>6}, pairwise code distance "
                  f"{r['code_pairwise_l2']:.4f} / norm {r['code_norm']:.3f}")
        print(f"  mean: spearman(std, error) {summary['spearman_std_error']}, baseline {summary['spearman_radius_error']}, "
              f"positive on {summary['positive_shapes']}/{summary['shapes_with_mesh']} shapes; median std "
              f"{summary['std_median_voxels']} voxels vs median error {summary['error_median_voxels']} voxels")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
