"""Stage 3 experiment: does shaded-RGB supervision teach 3-D? Silhouette-only vs silhouette + RGB.

Same data, same preset and budget (epochs), same seeds; per seed four arms:

    sil-s{seed}        Stage 1 from silhouettes, then Stage 2 (Phase 1 + Phase 2) in the same folder
                       -> arms "cnn-sil" and "flow-sil"
    rgb-cnn-s{seed}    Stage 1 with --rgb-weight LAMBDA                      -> arm "cnn-rgb"
    rgb-flow-s{seed}   Stage 2 with --rgb-weight LAMBDA from sil-s{seed}'s Stage 1 -> arm "flow-rgb"

The flow arms start from the same Stage 1. Each flow folder distils its own Phase 1 from it (so
the two flow arms need not wait for each other); Phase 1 is deterministic on the CPU at a fixed
thread count, and `--eval` checks that both folders' Phase-1 checkpoints are identical.

Training runs as `flowsdf train` subprocesses (`--jobs` at a time, `--threads` each), each
resumable: rerun the same command after an interruption and every arm continues where it
stopped. `--eval` then scores every finished arm (`flowsdf.eval.run.evaluate_run`, which includes
normal accuracy) and writes OUT/results.json and OUT/results.md.

    python benchmarks/stage3_experiment.py --out runs/stage3-exp --seeds 0 1 --rgb-weight 1
    python benchmarks/stage3_experiment.py --out runs/stage3-exp --seeds 0 1 --rgb-weight 1 --eval
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    name: str
    args: list[str]  # flowsdf train arguments, without --resume
    run_dir: Path
    stage: str  # the stage folder whose summary.json marks the job done
    deps: list[str] = field(default_factory=list)


def jobs_for(seed: int, out: Path, preset: str, weight: float, threads: int) -> list[Job]:
    common = ["--preset", preset, "--seed", str(seed), "--threads", str(threads), "--quiet"]
    sil, cnn, flow = out / f"sil-s{seed}", out / f"rgb-cnn-s{seed}", out / f"rgb-flow-s{seed}"
    w = ["--rgb-weight", str(weight)]
    return [
        Job(f"s{seed}/cnn-sil", ["--stage", "cnn", "--out", str(sil), *common], sil, "stage1"),
        Job(f"s{seed}/cnn-rgb", ["--stage", "cnn", "--out", str(cnn), *common, *w], cnn, "stage1"),
        Job(f"s{seed}/flow-sil", ["--stage", "flow", "--init", str(sil), "--out", str(sil), *common], sil, "phase2",
            [f"s{seed}/cnn-sil"]),
        Job(f"s{seed}/flow-rgb", ["--stage", "flow", "--init", str(sil), "--out", str(flow), *common, *w], flow, "phase2",
            [f"s{seed}/cnn-sil"]),
    ]


def is_done(job: Job) -> bool:
    return (job.run_dir / job.stage / "summary.json").exists()


def command(job: Job) -> list[str]:
    started = (job.run_dir / job.stage / "last.safetensors").exists() or (
        job.stage == "phase2" and (job.run_dir / "phase1" / "last.safetensors").exists())
    return [sys.executable, "-m", "flowsdf", "train", *job.args, *(["--resume"] if started else [])]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    p.add_argument("--eval", action="store_true", help="score the finished arms and write results.json / .md")
    args = p.parse_args()
    all_jobs = [j for s in args.seeds for j in jobs_for(s, args.out, args.preset, args.rgb_weight, args.threads)]
    if args.eval:
        from stage3_results import evaluate_all  # noqa: E402  (beside this script)

        evaluate_all(args.out, args.seeds, args.rgb_weight, args.threads)
    else:
        train_all(all_jobs, args.out, args.jobs)
