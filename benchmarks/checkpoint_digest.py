"""What the checkpoint digest costs: save and load of seed-size checkpoints with and without it.

Builds the seed preset's models (flowsdf.models.build), gives them Adam state like a training
checkpoint, and times `checkpoint.save` / `checkpoint.load` against the digest alone
(`checkpoint.tensors_digest`). Prints milliseconds (median of the repeats) and file sizes.

    python benchmarks/checkpoint_digest.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from flowsdf import checkpoint
from flowsdf import config as config_mod
from flowsdf.models.build import build_flow, build_stage1


def with_adam_state(modules: dict[str, torch.nn.Module]) -> torch.optim.Optimizer:
    """An Adam optimiser after one step, so the checkpoint holds its two moments per weight."""
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_mod.preset("seed")
    encoder, decoder = build_stage1(cfg)
    conditioner, velocity = build_flow(cfg)
    cases = {
        "stage1 (encoder + decoder + Adam)": {"encoder": encoder, "decoder": decoder},
        "phase2 (conditioner + velocity + decoder + Adam)": {"conditioner": conditioner, "velocity": velocity,
                                                             "decoder": decoder},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, modules in cases.items():
            opt = with_adam_state(modules)
            path = Path(tmp) / "last.safetensors"
            checkpoint.save(path, modules, opt, {"epoch": 1})
            tensors = load_file(str(path))
            mb = path.stat().st_size / 1e6
            digest = median_ms(lambda t=tensors: checkpoint.tensors_digest(t), args.repeats)
            save = median_ms(lambda p=path, m=modules, o=opt: checkpoint.save(p, m, o, {"epoch": 1}), args.repeats)
            load = median_ms(lambda p=path, m=modules, o=opt: checkpoint.load(p, m, o), args.repeats)
            print(f"{label}: {mb:.1f} MB; digest {digest:.1f} ms; save (with digest, incl. fsync) {save:.1f} ms; "
                  f"load (with verification) {load:.1f} ms; digest share: save {digest / save:.0%}, load {digest / load:.0%}")
    print(f"torch threads {torch.get_num_threads()}, CPU")


if __name__ == "__main__":
    main()
