"""Stage 1, Mini SDF-SRN: image -> CNN encoder -> code -> SDF decoder -> renderer -> BCE against
the silhouette; and the final evaluation every silhouette-trained phase ends with."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from flowsdf import runs
from flowsdf.build import build_stage1
from flowsdf.models.codes import CodeTable
from flowsdf.checkpoint import write_json
from flowsdf.config import Config
from flowsdf.data.dataset import Dataset
from flowsdf.data.frames import view_frame_problem
from flowsdf.device import device_name, pick_device
from flowsdf.errors import warn
from flowsdf.metrics.views import evaluate_views
from flowsdf.provenance import provenance
from flowsdf.runs import load_data, run_data
from flowsdf.train import distributed
from flowsdf.train.loop import Phase, fit_silhouettes
from flowsdf.train.rgb import add_albedo, check_rgb


def train_stage1(
    cfg: Config,
    run_dir: Path,
    data_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    until_epoch: int | None = None,
) -> dict | None:
    """Mini SDF-SRN: train the CNN encoder and SDF decoder from silhouettes.

    Returns the final summary, or None when `until_epoch` stopped the run before its end.
    Under torchrun (several processes) rank 0 evaluates and returns the summary, the others {}.
    """
    dev = distributed.init_from_env(pick_device(device))
    runs.ensure_writable(run_dir)  # before the dataset, which may take minutes to generate
    with distributed.main_first():  # rank 0 generates a missing dataset, the others then load it
        if resume:
            cfg = runs.read_config(run_dir)
            data = run_data(cfg, run_dir, data_dir, progress=progress)
        else:
            data = load_data(cfg, data_dir, progress=progress)
            cfg = dataclasses.replace(cfg, data=data.config)  # the run records the data it really used
    cfg, resume = runs.prepare(run_dir, cfg, "stage1", resume)
    check_rgb(cfg.stage1, data)
    problem = view_frame_problem(cfg.frame, cfg.data.train_views, cfg.stage1.all_views)
    if problem and distributed.is_main():
        warn(problem)
    data = data.to(dev)
    if distributed.is_main():
        runs.begin(run_dir, cfg, "stage1")
        runs.record_data(run_dir, data.root, cfg.data.hash())
    encoder, decoder = (m.to(dev) for m in build_stage1(cfg))
    if isinstance(encoder, CodeTable):  # its rows are the training shapes, addressed by their input pictures
        encoder.register(data.train.input.images[:, 0])
    phase = Phase(
        name="stage1",
        modules=add_albedo({"encoder": encoder, "decoder": decoder}, cfg.stage1, math.prod(cfg.decoder.latent_shape), cfg.seed, dev),
        predict=lambda images, gen: encoder(images),
        decoder=decoder,
        train=cfg.stage1,
    )
    t0 = time.perf_counter()
    if not fit_silhouettes(phase, cfg, data, run_dir, resume, progress, until_epoch):
        return None
    if not distributed.is_main():
        return {}
    return finish(phase, cfg, data, run_dir, time.perf_counter() - t0)


def finish(phase: Phase, cfg: Config, data: Dataset, run_dir: Path, wall_seconds: float) -> dict:
    """Evaluate the final model on training and novel views; write summary.json (with what
    produced it: flowsdf.provenance). Called only once every epoch is done."""
    for m in phase.modules.values():
        m.eval()
    metrics = runs.read_metrics(run_dir, phase.name)
    tau = phase.train.tau_end
    device = next(phase.decoder.parameters()).device
    summary = {
        "stage": phase.name,
        "epochs": phase.train.epochs,
        "train_loss_last_epoch": metrics[-1]["loss"] if metrics else None,
        "train_seconds_total": sum(r["seconds"] for r in metrics),
        "wall_seconds_this_session": wall_seconds,
        "device": device_name(device),
        "train_views": evaluate_views(phase.predict, phase.decoder, data.train, "input", cfg.render, tau, cfg.seed),
        "novel_views": evaluate_views(phase.predict, phase.decoder, data.train, "novel", cfg.render, tau, cfg.seed),
    }
    summary["provenance"] = provenance(device, seconds={"wall": wall_seconds, "training": summary["train_seconds_total"]})
    write_json(Path(run_dir) / phase.name / "summary.json", summary)
    return summary
