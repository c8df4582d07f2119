"""Latency of reconstructing one picture: the flow, the meshes (coarse-to-fine vs dense), the view.

For held-out pictures of a run's dataset: the pipeline's codes (flow at --steps Euler steps, batch
1), coarse-to-fine marching cubes at each --resolutions (with the number of field evaluations),
the dense reference grid at the same resolutions (and how far its mesh is from the coarse-to-fine
one: symmetric Hausdorff in voxels; 0 means the same mesh), the input-view search, and the whole
`reconstruct_image` with K = 1. Prints a table and writes JSON. Timings are medians over the
pictures x --repeats, on the CPU with torch's threads unless --threads is given. Each timing is
wall-clock seconds; with --threads 1 the process's CPU seconds are recorded too (`*_cpu_s`),
which stay close to the unloaded time when other jobs share the machine.

    python benchmarks/reconstruct_latency.py --run runs/reproduce-quick [--out FILE.json] [--unfinished]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from flowsdf import runs
from flowsdf.device import device_name
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh, mesh_from_grid, sdf_grid_coarse_to_fine
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--model", default="flow")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--pictures", type=int, default=4, help="held-out pictures to time")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
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
            t_dense, (v_dense, _) = timed(lambda: extract_mesh(field, r), 1)  # noqa: B023
            row[f"mesh{r}"] = {"coarse_to_fine_s": t_fast + t_mc, "marching_cubes_s": t_mc, "dense_s": t_dense,
                               "evaluated": evaluated, "grid_points": r**3, "vertices": len(v_fast),
                               "watertight": bool(to_trimesh(v_fast, f_fast).is_watertight),
                               "hausdorff_voxels": hausdorff(v_fast, v_dense) / voxel,
                               "same_vertex_count": len(v_fast) == len(v_dense)}
        mesh = to_trimesh(*mesh_from_grid(sdf_grid_coarse_to_fine(field, 64)[0]))
        mask = (image.amax(0) > 0.02).float()  # (S, S)
        row["camera_search_s"], _ = timed(lambda: pipe.input_camera(code, mask, mesh), args.repeats, "camera")  # noqa: B023
        rec = reconstruct_image(pipe, image, samples=1, steps=args.steps, resolution=128)
        row["reconstruct_image_128_s"] = rec.timings
        rows.append(row)
        print(json.dumps(row))
    med = lambda key: float(np.median([r[key] for r in rows]))  # noqa: E731
    summary = {
        "run": str(args.run), "model": args.model, "steps": args.steps, "device": device_name("cpu"),
        "load_average_1min": os.getloadavg()[0], "pictures": len(rows), "repeats": args.repeats,
        "flow_s": med("flow_s"), "camera_search_s": med("camera_search_s"),
        "mesh": {r: {k: float(np.median([row[f"mesh{r}"][k] for row in rows]))
                     for k in ("coarse_to_fine_s", "marching_cubes_s", "dense_s", "evaluated", "hausdorff_voxels")}
                 for r in args.resolutions},
        "cpu_s_median": {k: float(np.median(v)) for k, v in CPU_TIMES.items()},
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
    print(f"  input-camera search (projected mesh points): {summary['camera_search_s']:.3f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
