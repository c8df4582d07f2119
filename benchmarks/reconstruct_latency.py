"""Latency of reconstructing one picture: the flow, the meshes (coarse-to-fine vs dense), the view,
and the whole reconstruction with its preview for K samples.

For held-out pictures of a run's dataset: the pipeline's codes (flow at --steps Euler steps, batch
1), coarse-to-fine marching cubes at each --resolutions (with the number of field evaluations),
the dense reference grid at the same resolutions (and how far its mesh is from the coarse-to-fine
one: symmetric Hausdorff in voxels; 0 means the same mesh), the input-view search, and end to end
for each --samples K at --e2e-resolution: `reconstruct_image` (the picture prepared, K codes, the
result mesh, the spread, the camera) plus the preview PNG (`reconstruction_preview`), which is what
the viewer's request and one picture of `flowsdf reconstruct` cost; then, separately, what the CLI
adds by writing every sample's own mesh at full resolution (`Reconstruction.sample_meshes`). For
K >= 2 the spread from the mean's narrow band (`flowsdf.mesh.uncertainty.band_std`) is compared
with the reference (`vertex_std`: every sample at every vertex). --baseline also times the way it
was done before (every sample meshed and the spread at every vertex, one field at a time).

Prints a table and writes JSON. Timings are medians over the pictures x --repeats, on the CPU with
torch's threads unless --threads is given. Each timing is wall-clock seconds; the process's CPU
seconds are recorded too (`cpu_s`): with --threads 1 they stay close to the unloaded time when
other jobs share the machine.

    python benchmarks/reconstruct_latency.py --run runs/reproduce-quick [--samples 1 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from flowsdf import runs
from flowsdf.device import device_name
from flowsdf.figures.preview import reconstruction_preview
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh, extract_mesh_coarse_to_fine, mesh_from_grid, sdf_grid_coarse_to_fine
from flowsdf.mesh.uncertainty import vertex_std
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import reconstruct_image

CPU_TIMES: dict[str, list[float]] = {}


def timed(fn, repeats: int, name: str | None = None) -> tuple[float, object]:
    """Median wall seconds of `repeats` calls (after one untimed call) and the last result; the
    CPU seconds of each call are appended to CPU_TIMES[name]."""
    out = fn()
    times = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        if name:
            CPU_TIMES.setdefault(name, []).append(time.process_time() - cpu)
    return float(np.median(times)), out


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else float("inf")
    return float(max(cKDTree(a).query(b)[0].max(), cKDTree(b).query(a)[0].max()))


def slope_check(field, vertices: np.ndarray, resolution: int, radius: float, points: int = 20000,
                seed: int = 0) -> dict:
    """The slope the coarse-to-fine mesher assumes (the steepest finite difference on its 16-voxel
    coarse grid, at least 1) against the steepest gradient near the surface (central differences
    at points within 2 coarse cells of the mesh's vertices). The band test (a cell is refined when
    a corner's |sdf| is under slope x its diagonal, twice what the nearest corner can be from a
    surface inside) is sound where the gradient stays under twice the assumed slope.

    Points within a voxel of the bounding sphere (`radius`, flowsdf.fields.bounded) are left out:
    there the field steps down from the decoder's value to the distance to the sphere, never
    changing sign, and a value that is smaller than the slope allows only marks more cells."""
    h = 2.0 / (resolution - 1)
    axis = torch.linspace(-1.0, 1.0, (resolution - 1) // 16 + 2)  # (n,) about the mesher's coarse grid
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    values = field(grid).reshape((len(axis),) * 3)
    step = float(axis[1] - axis[0])
    assumed = max(1.0, max(float(values.diff(dim=d).abs().max()) / step for d in range(3)))
    if len(vertices) == 0:  # no surface: nothing to check
        return {"assumed_slope": assumed, "gradient_max_near_surface": 0.0, "gradient_p99_near_surface": 0.0}
    rng = np.random.default_rng(seed)
    near = vertices[rng.integers(len(vertices), size=points)] + rng.uniform(-32 * h, 32 * h, (points, 3))
    near = near[np.abs(np.linalg.norm(near, axis=1) - radius) > h]
    p = torch.from_numpy(near.astype(np.float32))  # (N, 3)
    e = 0.25 * h
    grad = torch.stack([(field(p + e * d) - field(p - e * d)).reshape(-1) / (2 * e) for d in torch.eye(3)], dim=-1)  # (N, 3)
    norm = grad.norm(dim=-1)
    return {"assumed_slope": assumed, "gradient_max_near_surface": float(norm.max()),
            "gradient_p99_near_surface": float(norm.quantile(0.99))}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": time.perf_counter() - start[0], "cpu_s": time.process_time() - start[1]}


def end_to_end(pipe: FlowSDF, image, samples: int, resolution: int, steps: int, folder: Path,
               baseline: bool) -> dict:
    """One picture, K samples: reconstruct + preview; then the CLI's sample meshes; the spread's error."""
    start = clock()
    rec = reconstruct_image(pipe, image, samples=samples, steps=steps, resolution=resolution)
    recon = since(start)
    start = clock()
    reconstruction_preview(rec, folder / f"preview_k{samples}.png")
    preview = since(start)
    row = {"samples": samples, "reconstruct": recon, "preview": preview,
           "total": {k: recon[k] + preview[k] for k in recon}, "timings": dict(rec.timings)}
    start = clock()
    rec.sample_meshes()
    row["sample_meshes"] = since(start)  # what `flowsdf reconstruct` adds by writing every sample's mesh
    if samples >= 2 and len(rec.mesh.vertices):
        start = clock()
        exact = vertex_std([pipe.field(c) for c in rec.codes], rec.mesh.vertices)  # (V,)
        reference = since(start)
        err = np.abs(rec.vertex_std - exact)
        row["spread"] = {"vertices": len(exact), "exact_median": float(np.median(exact)),
                         "band_median": float(np.median(rec.vertex_std)), "abs_error_median": float(np.median(err)),
                         "abs_error_p95": float(np.percentile(err, 95)),
                         "rel_error_median": float(np.median(err / np.maximum(exact, 1e-12))),
                         "spearman": float(spearmanr(exact, rec.vertex_std).statistic),
                         "reference_s": reference}
    if baseline:  # before: every sample meshed one by one, the mean too, the spread at every vertex
        start = clock()
        for code in rec.codes:
            extract_mesh_coarse_to_fine(pipe.field(code), resolution=resolution)
        if samples >= 2:
            v, _ = extract_mesh_coarse_to_fine(pipe.field(rec.codes.mean(0)), resolution=resolution)
            vertex_std([pipe.field(c) for c in rec.codes], v)
        row["baseline_meshes_and_spread"] = since(start)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--model", default="flow")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--pictures", type=int, default=4, help="held-out pictures to time")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 8], help="K for the end-to-end timings")
    p.add_argument("--e2e-resolution", type=int, default=128, help="grid of the end-to-end timings (default 128)")
    p.add_argument("--baseline", action="store_true", help="also time the former way (K meshes, exact spread)")
    p.add_argument("--skip-dense", action="store_true", help="skip the dense reference grids (slow)")
    p.add_argument("--unfinished", action="store_true", help="accept the run's latest, unfinished state")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/reconstruct_latency.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = FlowSDF.from_run(args.run, args.model, "cpu", finished=not args.unfinished)
    data = runs.run_data(pipe.cfg, args.run, None, progress=False)
    images = data.heldout.input.images[: args.pictures, 0]  # (N, 3, S, S)
    rows = []
    for i, image in enumerate(images):
        row: dict = {"picture": i}
        row["flow_s"], result = timed(lambda: pipe(image, steps=args.steps), args.repeats, "flow")  # noqa: B023
        code = result.codes[0, 0]
        field = pipe.field(code)
        for r in args.resolutions:
            voxel = 2.0 / (r - 1)
            t_fast, (values, evaluated) = timed(lambda: sdf_grid_coarse_to_fine(field, r), args.repeats, f"grid{r}")  # noqa: B023
            t_mc, (v_fast, f_fast) = timed(lambda: mesh_from_grid(values), args.repeats, f"mc{r}")  # noqa: B023
            if args.skip_dense:
                t_dense, v_dense = float("nan"), v_fast
            else:
                t_dense, (v_dense, _) = timed(lambda: extract_mesh(field, r), 1)  # noqa: B023
            row[f"mesh{r}"] = {"coarse_to_fine_s": t_fast + t_mc, "marching_cubes_s": t_mc, "dense_s": t_dense,
                               "evaluated": evaluated, "grid_points": r**3, "vertices": len(v_fast),
                               "watertight": bool(to_trimesh(v_fast, f_fast).is_watertight),
                               "hausdorff_voxels": hausdorff(v_fast, v_dense) / voxel,
                               "same_vertex_count": len(v_fast) == len(v_dense)}
        row["slope"] = slope_check(field, v_fast, args.resolutions[-1], pipe.cfg.render.bound_radius)
        mesh = to_trimesh(*mesh_from_grid(sdf_grid_coarse_to_fine(field, 64)[0]))
        mask = (image.amax(0) > 0.02).float()  # (S, S)
        row["camera_search_s"], _ = timed(lambda: pipe.input_camera(code, mask, mesh), args.repeats, "camera")  # noqa: B023
        with tempfile.TemporaryDirectory() as tmp:
            row["end_to_end"] = {}
            for k in args.samples:
                runs_k = [end_to_end(pipe, image, k, args.e2e_resolution, args.steps, Path(tmp),
                                     args.baseline and j == 0) for j in range(args.repeats)]
                row["end_to_end"][k] = {**runs_k[-1], "total_wall_s_runs": [r["total"]["wall_s"] for r in runs_k],
                                        "total_cpu_s_runs": [r["total"]["cpu_s"] for r in runs_k]}
                if "baseline_meshes_and_spread" in runs_k[0]:  # timed in the first run only
                    row["end_to_end"][k]["baseline_meshes_and_spread"] = runs_k[0]["baseline_meshes_and_spread"]
        rows.append(row)
        print(json.dumps(row))
    med = lambda key: float(np.median([r[key] for r in rows]))
    e2e = {}
    for k in args.samples:
        e = [row["end_to_end"][k] for row in rows]
        e2e[k] = {"total_wall_s": float(np.median([x for r in e for x in r["total_wall_s_runs"]])),
                  "total_cpu_s": float(np.median([x for r in e for x in r["total_cpu_s_runs"]])),
                  "reconstruct_wall_s": float(np.median([r["reconstruct"]["wall_s"] for r in e])),
                  "preview_wall_s": float(np.median([r["preview"]["wall_s"] for r in e])),
                  "sample_meshes_wall_s": float(np.median([r["sample_meshes"]["wall_s"] for r in e])),
                  "sample_meshes_cpu_s": float(np.median([r["sample_meshes"]["cpu_s"] for r in e])),
                  "steps_median_s": {name: float(np.median([r["timings"].get(name, np.nan) for r in e]))
                                     for name in e[0]["timings"]}}
        if "spread" in e[0]:
            e2e[k]["spread"] = {key: float(np.median([r["spread"][key] for r in e]))
                                for key in ("abs_error_median", "abs_error_p95", "rel_error_median", "spearman",
                                            "exact_median", "band_median")}
        if "baseline_meshes_and_spread" in e[0]:
            e2e[k]["baseline_meshes_and_spread_wall_s"] = float(np.median(
                [r["baseline_meshes_and_spread"]["wall_s"] for r in e]))
            e2e[k]["baseline_meshes_and_spread_cpu_s"] = float(np.median(
                [r["baseline_meshes_and_spread"]["cpu_s"] for r in e]))
    summary = {
        "run": str(args.run), "model": args.model, "steps": args.steps, "device": device_name("cpu"),
        "load_average_1min": os.getloadavg()[0], "pictures": len(rows), "repeats": args.repeats,
        "flow_s": med("flow_s"), "camera_search_s": med("camera_search_s"),
        "mesh": {r: {k: float(np.median([row[f"mesh{r}"][k] for row in rows]))
                     for k in ("coarse_to_fine_s", "marching_cubes_s", "dense_s", "evaluated", "hausdorff_voxels")}
                 for r in args.resolutions},
        "band_test_sound": all(r["slope"]["gradient_max_near_surface"] <= 2 * r["slope"]["assumed_slope"] for r in rows),
        "cpu_s_median": {k: float(np.median(v)) for k, v in CPU_TIMES.items()},
        "threads": torch.get_num_threads(), "end_to_end_resolution": args.e2e_resolution, "end_to_end": e2e,
        "all_same_vertex_count": all(row[f"mesh{r}"]["same_vertex_count"] for row in rows for r in args.resolutions),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['device']}, load average {summary['load_average_1min']:.1f}, median of {len(rows)} pictures:")
    print(f"  flow ({args.steps} steps, batch 1): {summary['flow_s'] * 1e3:.0f} ms")
    for r, m in summary["mesh"].items():
        print(f"  mesh {r}^3: coarse-to-fine {m['coarse_to_fine_s']:.3f} s ({m['evaluated'] / r**3:.1%} of the grid "
              f"evaluated, marching cubes {m['marching_cubes_s']:.3f} s), dense {m['dense_s']:.3f} s, "
              f"Hausdorff to dense {m['hausdorff_voxels']:.3f} voxels")
    cpu = summary["cpu_s_median"]
    if torch.get_num_threads() == 1:
        print("  CPU seconds (1 thread): flow {:.3f}, ".format(cpu["flow"]) + ", ".join(
            f"mesh {r}^3 {cpu[f'grid{r}'] + cpu[f'mc{r}']:.3f}" for r in args.resolutions))
    slopes = [(r["slope"]["gradient_max_near_surface"], r["slope"]["assumed_slope"]) for r in rows]
    print("  slope (steepest gradient near the surface / the mesher's assumed slope, sound under 2): "
          + ", ".join(f"{g:.2f}/{a:.2f}" for g, a in slopes)
          + ("" if summary["band_test_sound"] else "  ** the band test's margin is exceeded **"))
    print(f"  input-camera search (projected mesh points): {summary['camera_search_s']:.3f} s")
    for k, e in e2e.items():
        print(f"  end to end, K = {k} at {args.e2e_resolution}^3: reconstruct + preview {e['total_wall_s']:.2f} s wall "
              f"({e['total_cpu_s']:.2f} s CPU; reconstruct {e['reconstruct_wall_s']:.2f}, preview "
              f"{e['preview_wall_s']:.2f}); + every sample's own mesh (the CLI writes them) "
              f"{e['sample_meshes_wall_s']:.2f} s wall ({e['sample_meshes_cpu_s']:.2f} s CPU)")
        if "spread" in e:
            sp = e["spread"]
            print(f"    spread from the band vs every vertex: median |error| {sp['abs_error_median']:.2e} "
                  f"(p95 {sp['abs_error_p95']:.2e}; exact median {sp['exact_median']:.2e}), Spearman "
                  f"{sp['spearman']:.3f}")
        if "baseline_meshes_and_spread_wall_s" in e:
            print(f"    before (every sample meshed, spread at every vertex): "
                  f"{e['baseline_meshes_and_spread_wall_s']:.2f} s wall ({e['baseline_meshes_and_spread_cpu_s']:.2f} s "
                  "CPU) for the meshes and spread alone")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
