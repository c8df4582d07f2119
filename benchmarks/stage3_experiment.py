"""Stage 3 experiment: does shaded-RGB supervision teach 3-D? Silhouette-only vs silhouette + RGB.

Same data, same preset and budget (epochs), same seeds; per seed four arms:

    sil-s{seed}        Stage 1 from silhouettes                                   -> arm "cnn-sil"
    rgb-cnn-s{seed}    Stage 1 with rgb_weight LAMBDA                             -> arm "cnn-rgb"
    flow-sil-s{seed}   Phase 1 from sil-s{seed}'s Stage 1, then Phase 2           -> arm "flow-sil"
    rgb-flow-s{seed}   the same Phase 1 (copied), then Phase 2 with rgb_weight    -> arm "flow-rgb"

The flow arms start from the same Stage 1 and the same Phase-1 weights. Phase 1 runs without the
noise-scaling ablation (not part of this comparison), and `--flow-epochs` can shorten Phase 2 for
both flow arms alike when the CPU budget is short (recorded in each run's config.json).

Training runs as `flowsdf train` subprocesses (`--jobs` at a time, `--threads` each), each
resumable: rerun the same command after an interruption and every arm continues where it
stopped. `--eval` then scores every finished arm (`flowsdf.eval.run.evaluate_run`, which includes
normal accuracy) and writes OUT/results.json and OUT/results.md.

    python benchmarks/stage3_experiment.py --out runs/stage3-exp --seeds 0 1 --rgb-weight 1 [--flow-epochs N]
    python benchmarks/stage3_experiment.py --out runs/stage3-exp --seeds 0 1 --rgb-weight 1 --eval
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALBEDO_LR_SCALE = 100.0


@dataclass
class Job:
    name: str
    args: list[str]  # flowsdf train arguments (without --resume), or this script's --job arguments
    done_file: Path  # its existence marks the job done
    deps: list[str] = field(default_factory=list)
    script: bool = False  # run this script with `args` instead of `flowsdf train`


def jobs_for(seed: int, out: Path, preset: str, weight: float, threads: int, flow_epochs: int | None) -> list[Job]:
    common = ["--preset", preset, "--seed", str(seed), "--threads", str(threads), "--quiet"]
    sil, cnn = out / f"sil-s{seed}", out / f"rgb-cnn-s{seed}"
    flow_sil, flow_rgb = out / f"flow-sil-s{seed}", out / f"rgb-flow-s{seed}"
    w = ["--rgb-weight", str(weight)]
    job = ["--out", str(out), "--preset", preset, "--seed", str(seed), "--threads", str(threads), *w,
           *(["--flow-epochs", str(flow_epochs)] if flow_epochs else [])]
    return [
        Job(f"s{seed}/cnn-sil", ["--stage", "cnn", "--out", str(sil), *common], sil / "stage1" / "summary.json"),
        Job(f"s{seed}/cnn-rgb", ["--stage", "cnn", "--out", str(cnn), *common, *w], cnn / "stage1" / "summary.json"),
        Job(f"s{seed}/phase1", ["--job", "phase1", *job], flow_sil / "phase1" / "last.safetensors", [f"s{seed}/cnn-sil"], True),
        Job(f"s{seed}/flow-sil", ["--job", "flow-sil", *job], flow_sil / "phase2" / "summary.json", [f"s{seed}/phase1"], True),
        Job(f"s{seed}/flow-rgb", ["--job", "flow-rgb", *job], flow_rgb / "phase2" / "summary.json", [f"s{seed}/phase1"], True),
    ]


def is_done(job: Job) -> bool:
    return job.done_file.exists()


def command(job: Job) -> list[str]:
    if job.script:
        return [sys.executable, str(Path(__file__).resolve()), *job.args]
    started = (job.done_file.parent / "last.safetensors").exists()
    return [sys.executable, "-m", "flowsdf", "train", *job.args, *(["--resume"] if started else [])]


def flow_config(preset: str, seed: int, flow_epochs: int | None, rgb_weight: float, phase1_iterations: int | None):
    from flowsdf import config as config_mod

    cfg = config_mod.preset(preset)
    cfg.seed = seed
    cfg.phase1.ablation = False
    if phase1_iterations:
        cfg.phase1.iterations = phase1_iterations
    if flow_epochs:
        cfg.phase2.epochs = flow_epochs
    cfg.phase2.rgb_weight = rgb_weight
    if rgb_weight > 0:  # the albedo head is new in Phase 2: 100 x the phase's lr (2e-4 at peak)
        cfg.phase2.lr_scale = {**cfg.phase2.lr_scale, "albedo": ALBEDO_LR_SCALE}
    return cfg


def run_flow_job(kind: str, out: Path, preset: str, seed: int, flow_epochs: int | None, rgb_weight: float,
                 phase1_iterations: int | None) -> None:
    """One flow job, in this process: Phase 1 only, or a Phase 2 arm (resumable)."""
    import shutil

    from flowsdf import runs
    from flowsdf.train.flow import train_flow

    init, flow_sil, flow_rgb = out / f"sil-s{seed}", out / f"flow-sil-s{seed}", out / f"rgb-flow-s{seed}"
    if kind == "phase1":  # stops before the first Phase-2 epoch
        train_flow(flow_config(preset, seed, flow_epochs, 0.0, phase1_iterations), flow_sil, init, progress=False,
                   until_epoch=0)
        return
    run = flow_sil if kind == "flow-sil" else flow_rgb
    if kind == "flow-rgb" and not (run / "phase1" / "last.safetensors").exists():
        run.mkdir(parents=True, exist_ok=True)
        shutil.copytree(flow_sil / "phase1", run / ".phase1.tmp", dirs_exist_ok=True)
        os.replace(run / ".phase1.tmp", run / "phase1")
    cfg = flow_config(preset, seed, flow_epochs, rgb_weight if kind == "flow-rgb" else 0.0, phase1_iterations)
    train_flow(cfg, run, init, resume=runs.checkpoint_path(run, "phase2").exists(), progress=False)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie left by an earlier invocation counts as finished)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def train_all(jobs: list[Job], out: Path, n_jobs: int) -> None:
    """Run the jobs, at most n_jobs at a time, each once its dependencies are done; log to OUT/logs.

    Each started job leaves OUT/logs/<job>.pid; a job whose process is still alive (from an
    earlier invocation of this script) is waited for, never started twice.
    """
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pid_file = lambda job: logs / f"{job.name.replace('/', '_')}.pid"  # noqa: E731
    running: dict[str, tuple[int, subprocess.Popen | None, float]] = {}
    done = {j.name for j in jobs if is_done(j)}
    failed: set[str] = set()
    pending = [j for j in jobs if j.name not in done]
    for job in list(pending):
        if pid_file(job).exists() and _alive(int(pid_file(job).read_text())):
            pending.remove(job)
            running[job.name] = (int(pid_file(job).read_text()), None, time.time())
            print(f"{time.strftime('%H:%M:%S')} {job.name} is already running (pid {running[job.name][0]})", flush=True)
    by_name = {j.name: j for j in jobs}
    while pending or running:
        for name, (pid, proc, t0) in list(running.items()):
            finished = proc.poll() is not None if proc is not None else not _alive(pid)
            if finished:
                del running[name]
                ok = is_done(by_name[name])
                (done if ok else failed).add(name)
                status = "done" if ok else "FAILED"
                print(f"{time.strftime('%H:%M:%S')} {name} {status} after {(time.time() - t0) / 60:.1f} min", flush=True)
        pending = [j for j in pending if not any(d in failed for d in j.deps)]
        for job in list(pending):
            if len(running) >= n_jobs:
                break
            if all(d in done for d in job.deps):
                pending.remove(job)
                log = (logs / f"{job.name.replace('/', '_')}.log").open("a")
                cmd = command(job)
                print(f"{time.strftime('%H:%M:%S')} start {job.name}: {' '.join(cmd[1:])}", flush=True)
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
                pid_file(job).write_text(str(proc.pid))
                running[job.name] = (proc.pid, proc, time.time())
        time.sleep(5)
    if failed:
        raise SystemExit(f"failed: {sorted(failed)} (see {logs})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/stage3-exp"))
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rgb-weight", type=float, default=1.0)
    p.add_argument("--jobs", type=int, default=3, help="training processes at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--flow-epochs", type=int, help="Phase-2 epochs of both flow arms (default: the preset's)")
    # 150 (the quick preset has 300): on the shared 2-core CPU the experiment must fit in about
    # two hours; both flow arms start from this same Phase 1, so it shifts their common start.
    p.add_argument("--phase1-iterations", type=int, default=150, help="Phase-1 iterations (0: the preset's)")
    p.add_argument("--eval", action="store_true", help="score the finished arms and write results.json / .md")
    p.add_argument("--job", choices=("phase1", "flow-sil", "flow-rgb"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        import torch

        torch.set_num_threads(args.threads)
        run_flow_job(args.job, args.out, args.preset, args.seed, args.flow_epochs, args.rgb_weight, args.phase1_iterations)
        raise SystemExit(0)
    all_jobs = [j for s in args.seeds for j in jobs_for(s, args.out, args.preset, args.rgb_weight, args.threads,
                                                         args.flow_epochs)]
    if args.eval:
        from stage3_results import evaluate_all  # noqa: E402  (beside this script)

        evaluate_all(args.out, args.seeds, args.rgb_weight, args.threads)
    else:
        train_all(all_jobs, args.out, args.jobs)
