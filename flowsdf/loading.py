"""Trained models from a run folder: built from its config.json, filled from its checkpoints.

This is the only place that turns a run folder into models: the pipeline (`FlowSDF.from_run`),
evaluation, Stage 2's start from Stage 1 and the report's figures all load through `load_model`.
Three models can be loaded from a run:

- "cnn": the Stage-1 encoder and its decoder (deterministic);
- "flow": the Stage-2 conditioner, velocity net and decoder, with the noise scale sigma;
- "flow-noscale": Phase 1's ablation flow distilled without noise scaling (sigma = 1), decoded by
  the Stage-1 decoder whose codes it was fitted to (it shows the collapse scaling prevents);
- "text": the text-conditioned flow (its text encoder as the conditioner), decoded by the Stage-1
  decoder whose codes it learnt (flowsdf.train.text).

Every refusal (no run, unfinished, damaged, another config) is one FlowSDFError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow, build_stage1, build_text_flow
from flowsdf.config import Config
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError
from flowsdf.models.albedo import MODULE as ALBEDO
from flowsdf.models.albedo import AlbedoHead
from flowsdf.text.tokenizer import WordTokenizer

MODELS = ("cnn", "flow", "flow-noscale", "text")


@dataclass
class Trained:
    """One model of a run, on a device, in eval mode."""

    cfg: Config
    model: str  # one of MODELS
    decoder: nn.Module
    tau: float  # the silhouette temperature it was trained to
    run_dir: Path
    stages: tuple[str, ...]  # the stages whose training it holds, e.g. ("stage1", "phase1", "phase2")
    encoder: nn.Module | None = None  # "cnn"
    conditioner: nn.Module | None = None  # the flows
    velocity: nn.Module | None = None
    sigma: float = 1.0  # the flow's source noise scale

    def __post_init__(self) -> None:
        if (self.encoder is None) == (self.velocity is None) or (self.conditioner is None) != (self.velocity is None):
            raise ValueError("a trained model has either an encoder or a conditioner and a velocity net")
        for m in self.modules.values():
            m.eval()

    @property
    def modules(self) -> dict[str, nn.Module]:
        names = ("encoder", "conditioner", "velocity", "decoder")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device


def load_model(run_dir: str | Path, model: str = "flow", device: str | torch.device = "auto", finished: bool = True,
               stage1: str | Path | None = None) -> Trained:
    """Load `model` from a run folder onto `device` ("auto": flowsdf.device.pick_device).

    With `finished` (the default) only a model whose training ran to its last epoch is accepted.
    `finished=False` takes the latest state instead — for a flow, Phase 2's last epoch or, before
    Phase 2, Phase 1's flow with the Stage-1 decoder (for the gradient check). Phase 1's flows
    decode with the Stage-1 decoder: the run's own, else the checkpoint Phase 1 recorded, else
    `stage1` (a checkpoint path) when given — a caller that knows it, such as Stage 2's training,
    passes it.
    """
    if model not in MODELS:
        raise FlowSDFError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    run_dir = Path(run_dir)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    cfg = runs.read_config(run_dir)
    if model == "text":
        return _load_text(run_dir, cfg, dev, finished)
    if model == "cnn":
        ckpt = stage_checkpoint(run_dir, "stage1", cfg.stage1.epochs, finished)
        encoder, decoder = (m.to(dev) for m in build_stage1(cfg))
        checkpoint.load(ckpt, {"encoder": encoder, "decoder": decoder}, map_location=dev)
        return Trained(cfg, model, decoder, cfg.stage1.tau_end, run_dir, ("stage1",), encoder=encoder)
    conditioner, velocity = (m.to(dev) for m in build_flow(cfg))
    _, decoder = (m.to(dev) for m in build_stage1(cfg))
    flow_modules = {"conditioner": conditioner, "velocity": velocity}
    p2 = runs.checkpoint_path(run_dir, "phase2")
    if model == "flow" and (finished or p2.exists()):
        ckpt = stage_checkpoint(run_dir, "phase2", cfg.phase2.epochs, finished)
        meta = checkpoint.load(ckpt, {**flow_modules, "decoder": decoder}, map_location=dev)
        return Trained(cfg, model, decoder, cfg.phase2.tau_end, run_dir, ("stage1", "phase1", "phase2"),
                       conditioner=conditioner, velocity=velocity, sigma=float(meta["sigma"]))
    # Phase 1's flows (the main one before Phase 2, or the ablation) decode with Stage 1's decoder.
    name = "last.safetensors" if model == "flow" else "noscale.safetensors"
    p1 = run_dir / "phase1" / name
    if not p1.is_file():
        what = "a Phase-1 flow" if model == "flow" else "Phase 1's no-scaling ablation flow"
        raise FlowSDFError(f"{run_dir} has no {what} ({p1} does not exist)")
    meta = checkpoint.load(p1, flow_modules, map_location=dev)
    s1 = Path(stage1) if stage1 is not None else stage1_checkpoint_of(run_dir)
    checkpoint.load(s1, {"decoder": decoder, "encoder": build_stage1(cfg)[0].to(dev)}, map_location=dev)
    return Trained(cfg, model, decoder, cfg.stage1.tau_end, run_dir, ("stage1", "phase1"),
                   conditioner=conditioner, velocity=velocity, sigma=float(meta["sigma"]))


def _load_text(run_dir: Path, cfg: Config, dev: torch.device, finished: bool) -> Trained:
    """The text flow of a run and the Stage-1 decoder it learnt the codes of."""
    ckpt = runs.checkpoint_path(run_dir, "text")
    if not ckpt.is_file():
        raise FlowSDFError(f"{run_dir} has no text model ({ckpt} does not exist); train one with "
                           f"`flowsdf train --stage text --init {run_dir} --out {run_dir}`")
    meta = checkpoint.read_header(ckpt)["meta"]
    if finished and meta.get("iteration") != cfg.text_train.iterations:
        raise FlowSDFError(f"{run_dir}: the text flow is unfinished (iteration {meta.get('iteration')} of "
                           f"{cfg.text_train.iterations}); resume its training first")
    tokenizer = WordTokenizer.from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
    text, velocity = (m.to(dev) for m in build_text_flow(cfg, tokenizer))
    checkpoint.load(ckpt, {"text": text, "velocity": velocity}, map_location=dev)
    encoder, decoder = (m.to(dev) for m in build_stage1(cfg))
    checkpoint.load(stage1_checkpoint_of(run_dir, "text"), {"encoder": encoder, "decoder": decoder}, map_location=dev)
    return Trained(cfg, "text", decoder, cfg.stage1.tau_end, run_dir, ("stage1", "text"), conditioner=text,
                   velocity=velocity, sigma=float(meta["sigma"]))


def finished_models(run_dir: Path, device: torch.device) -> dict[str, Trained]:
    """The finished models of a run, {"cnn": ..., "flow": ...}; at least one, else one clear error."""
    cfg = runs.read_config(run_dir)
    models = {}
    for name, stage, epochs in (("cnn", "stage1", cfg.stage1.epochs), ("flow", "phase2", cfg.phase2.epochs)):
        if name == "cnn" and cfg.encoder.kind == "table":
            continue  # a table of the training shapes' codes: nothing to evaluate on other pictures
        if runs.checkpoint_epoch(run_dir, stage) == epochs:
            models[name] = load_model(run_dir, name, device)
    if not models:
        raise FlowSDFError(f"{run_dir} has no finished stage to evaluate")
    return models


def load_albedo(path: Path, latent_dim: int, device: torch.device | str = "cpu") -> AlbedoHead | None:
    """The albedo head stored in a checkpoint (Stage 3), or None when the phase trained without RGB."""
    with safe_open(str(path), framework="pt") as f:
        has_head = any(k.startswith(f"model.{ALBEDO}.") for k in f.keys())
    if not has_head:
        return None
    head = AlbedoHead(latent_dim).to(device).eval()
    checkpoint.load(path, {ALBEDO: head}, map_location=device)
    return head


def stage_checkpoint(run_dir: Path, stage: str, epochs: int, finished: bool) -> Path:
    """A stage's checkpoint, refused unless it exists and (with `finished`) is at its last epoch."""
    epoch = runs.checkpoint_epoch(run_dir, stage)
    path = runs.checkpoint_path(run_dir, stage)
    if epoch is None:
        raise FlowSDFError(f"{run_dir} has no finished '{stage}' model ({path} does not exist)")
    if finished and epoch != epochs:
        raise FlowSDFError(f"{run_dir}: '{stage}' is unfinished (epoch {epoch} of {epochs}); resume its training first")
    return path


def stage1_checkpoint_of(run_dir: Path, stage: str = "phase1") -> Path:
    """The Stage-1 checkpoint a flow run started from: the run's own, else the one `stage`'s
    checkpoint recorded (by its path relative to the run, checked against its digest; older runs
    recorded an absolute path)."""
    own = runs.checkpoint_path(run_dir, "stage1")
    if own.is_file():
        return own
    meta = checkpoint.read_header(runs.checkpoint_path(run_dir, stage))["meta"]
    if "init_relative" in meta:
        path = Path(run_dir) / meta["init_relative"]
        if not path.is_file() or checkpoint.digest(path) != meta.get("init_sha256"):
            raise FlowSDFError(f"{run_dir}: the Stage-1 checkpoint it started from is not at {path} (moved or replaced)")
        return path
    init = meta.get("init")
    if not init or not Path(init).is_file():
        raise FlowSDFError(f"{run_dir}: the Stage-1 checkpoint it started from is not found ({init})")
    return Path(init)
