"""Is the flow's per-vertex uncertainty higher where its shape is wrong? Held-out shapes.

For each held-out picture of a run's dataset (in the run's frame: flowsdf.data.frames, so the
true shapes are where the model's codes put them): K flow samples (pipe(picture, samples=K,
guidance=W), seeds 0..K-1), the mesh of their mean code (coarse-to-fine, --resolution), the
per-vertex spread of the K decoded surfaces at its vertices (flowsdf.mesh.uncertainty.vertex_std: the
std of the K fields over the mean field's slope), and the vertex's
error: its distance to the true surface, |analytic sdf| at the vertex. Reported per shape and as a
mean: the Spearman rank correlation between std and error; the AUROC of std for "error > 2 voxels"
(over all vertices of all shapes, and per shape); as a trivial baseline, the same for the vertex's
distance from the origin (an uncertainty that only says "far out is harder" would match it); the
spread of the samples (mean pairwise code distance vs mean code norm) and the std in voxels; and the
error the samples share: the share of wrong vertices at which their std is under one voxel.

--guidance sets W (default: the run's flow.guidance), several values for a curve; --temperature and
--consistency (flowsdf.consistency) override the run's sampling settings. --heldout-seed S
scores fresh shapes (--shapes of them, default 40, drawn by the run's data recipe from data seed
S: flowsdf.runs.fresh_heldout) instead of the run's held-out split.

    python benchmarks/uncertainty.py --run runs/views-gen [--samples 8] [--guidance 1 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from flowsdf import runs
from flowsdf.checkpoint import write_json
from flowsdf.device import device_name
from flowsdf.mesh.extract import extract_mesh_coarse_to_fine
from flowsdf.mesh.uncertainty import field_values, vertex_std
from flowsdf.metrics.samples import pairwise_distance
from flowsdf.metrics.shapes import gt_field
from flowsdf.pipeline import FlowSDF

ERROR_VOXELS = 2.0  # "wrong" for the AUROC: further than this from the true surface


@torch.no_grad()
def sample_codes(pipe: FlowSDF, image: torch.Tensor, samples: int, guidance: float) -> torch.Tensor:
    """K codes (K, *latent) of one picture (3, S, S), seeds 0..K-1, as `flowsdf reconstruct` draws them."""
    return pipe(image[None], samples=samples, guidance=guidance, prepare=False).codes[0]  # (K, *latent)


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `score` for the boolean labels (Mann-Whitney, ties averaged)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def shape_row(pipe: FlowSDF, image: torch.Tensor, spec, samples: int, guidance: float, resolution: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """One shape's figures, and its vertices' std, error and radius (for the pooled AUROC)."""
    codes = sample_codes(pipe, image, samples, guidance)  # (K, *latent)
    flat = codes.flatten(1)  # (K, D)
    vertices, _ = extract_mesh_coarse_to_fine(pipe.field(codes.mean(dim=0)), resolution=resolution)
    row = {"code_pairwise_l2": float(pairwise_distance(codes[None])[0]), "code_norm": float(flat.norm(dim=1).mean()),
           "vertices": len(vertices)}
    empty = np.zeros(0)
    if len(vertices) == 0:
        return {**row, "spearman_std_error": None, "spearman_radius_error": None, "auroc_std": None}, empty, empty, empty
    std = vertex_std([pipe.field(c) for c in codes], vertices)  # (V,)
    error = np.abs(field_values([gt_field(spec)], vertices)[0])  # (V,) distance to the true surface
    radius = np.linalg.norm(vertices, axis=1)  # (V,)
    voxel = 2.0 / (resolution - 1)
    wrong = error > ERROR_VOXELS * voxel
    row.update({"spearman_std_error": rank_correlation(std, error), "spearman_radius_error": rank_correlation(radius, error),
                "auroc_std": auroc(std, wrong), "auroc_radius": auroc(radius, wrong), "wrong_share": float(wrong.mean()),
                "std_median_voxels": float(np.median(std) / voxel), "std_max_voxels": float(std.max() / voxel),
                "error_median_voxels": float(np.median(error) / voxel)})
    return row, std / voxel, error / voxel, radius


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--guidance", type=float, nargs="+", help="W values (default: the run's flow.guidance)")
    p.add_argument("--shapes", type=int, help="at most this many held-out shapes (default all)")
    p.add_argument("--temperature", type=float, help="source-noise scale (default: the run's flow.temperature)")
    p.add_argument("--consistency", type=float, help="redraw samples below this share of the noiseless sample's input-view "
                                                     "IoU (default: the run's flow.consistency; 0 = off)")
    p.add_argument("--consistency-tries", type=int, help="draws per sample at most (default: the run's)")
    p.add_argument("--heldout-seed", type=int, help="fresh shapes (--shapes of them, default 40) drawn by the run's data "
                                                    "recipe from this data seed, instead of its held-out split")
    p.add_argument("--unfinished", action="store_true", help="accept the run's latest, unfinished flow")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/uncertainty.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)  # before the work: a missing folder must not lose it
    pipe = FlowSDF.from_run(args.run, "flow", "cpu", finished=not args.unfinished)
    pipe.set_sampling(args.temperature, args.consistency, args.consistency_tries)
    split = runs.heldout_split(pipe.cfg, args.run, args.heldout_seed, args.shapes)
    n = min(len(split), args.shapes or len(split))
    result = {"run": str(args.run), "heldout_seed": args.heldout_seed, "stages": list(pipe.stages), "samples": args.samples, "resolution": args.resolution,
              "frame": pipe.cfg.frame, "temperature": pipe.cfg.flow.temperature, "consistency": pipe.cfg.flow.consistency,
              "consistency_tries": pipe.cfg.flow.consistency_tries, "device": device_name("cpu"), "sigma": pipe.sigma, "runs": []}
    for w in args.guidance or [pipe.cfg.flow.guidance]:
        rows, pooled = [], []
        for i in range(n):
            row, std, error, radius = shape_row(pipe, split.input.images[i, 0], split.shapes[i], args.samples, w,
                                                args.resolution)
            rows.append(row)
            pooled.append((std, error, radius))
        std, error, radius = (np.concatenate(x) for x in zip(*pooled))
        wrong = error > ERROR_VOXELS
        summary = {k: mean_of(rows, k) for k in ("spearman_std_error", "spearman_radius_error", "auroc_std",
                                                 "auroc_radius", "code_pairwise_l2", "code_norm", "std_median_voxels",
                                                 "error_median_voxels", "wrong_share")}
        summary.update({"pooled_spearman_std_error": rank_correlation(std, error),
                        "pooled_auroc_std": auroc(std, wrong), "pooled_auroc_radius": auroc(radius, wrong),
                        # Error the samples share: wrong vertices where the samples agree to within a voxel.
                        "wrong_with_std_under_1_voxel": float((std[wrong] < 1.0).mean()) if wrong.any() else None,
                        "pooled_std_median_wrong_voxels": float(np.median(std[wrong])) if wrong.any() else None,
                        "pooled_error_median_wrong_voxels": float(np.median(error[wrong])) if wrong.any() else None,
                        "positive_shapes": sum(1 for r in rows if (r["spearman_std_error"] or 0) > 0),
                        "shapes_with_mesh": sum(1 for r in rows if r["vertices"] > 0)})
        result["runs"].append({"guidance": w, "mean": summary, "per_shape": rows})
        print(f"W {w:g}, {n} held-out shapes, K = {args.samples}: spearman(std, error) "
              f"{summary['spearman_std_error']} per shape, {summary['pooled_spearman_std_error']} pooled "
              f"(baseline radius {summary['spearman_radius_error']}); AUROC(std, error > {ERROR_VOXELS:g} voxels) "
              f"{summary['pooled_auroc_std']} pooled (radius {summary['pooled_auroc_radius']}); code spread "
              f"{summary['code_pairwise_l2']} / norm {summary['code_norm']}; wrong vertices where the samples agree "
              f"within 1 voxel: {summary['wrong_with_std_under_1_voxel']}", flush=True)
        write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
