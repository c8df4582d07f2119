"""Run configuration: one dataclass tree, named presets, and its JSON round trip.

A run folder stores its `Config` as `config.json`; every later command (resume, eval, the next
stage) rebuilds the exact models from it. Presets are small functions, so the differences
between `tiny`, `quick` and `seed` read as a diff.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from flowsdf.data.dataset import DataConfig
from flowsdf.errors import FlowSDFError
from flowsdf.flow import FlowConfig
from flowsdf.models.conditioner import ConditionerConfig
from flowsdf.models.encoder import EncoderConfig
from flowsdf.models.sdf import DecoderConfig
from flowsdf.models.velocity import VelocityConfig
from flowsdf.render.silhouette import RenderConfig


@dataclass
class TrainConfig:
    """One training phase that renders silhouettes (Stage 1, Flow Phase 2)."""

    epochs: int = 300
    batch_size: int = 8
    lr: float = 5e-4
    lr_final_fraction: float = 0.1  # cosine decay from lr to lr * this over the epochs
    # Linear ramp of the lr over the first optimiser steps. Adam's first steps move every weight
    # by about lr whatever its gradient, which knocks an already-trained model off its minimum.
    warmup_steps: int = 0
    # Per-module multiplier of lr, by the phase's module names ("decoder", "velocity", ...); others 1.
    lr_scale: dict[str, float] = field(default_factory=dict)
    tau_start: float = 0.05  # silhouette temperature, annealed geometrically ...
    tau_end: float = 0.01  # ... to this by the last epoch
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    # Per-step decay of an exponential moving average of the weights; the average is the model
    # the phase keeps (its checkpoint, figures and summary). 0 = off: the last weights.
    ema_decay: float = 0.0
    figure_every: int = 25  # epochs between prediction-grid figures (always at the end too)
    figure_shapes: int = 6  # shapes shown in each figure


@dataclass
class DistillConfig:
    """Flow Phase 1: fit the flow to the frozen Stage-1 encoder's codes (no rendering)."""

    iterations: int = 3000
    batch_size: int = 50  # the seed's whole training set per step
    lr: float = 3e-4
    ablation: bool = True  # also distil a flow without noise scaling, to measure the collapse


@dataclass
class Config:
    preset: str = "seed"
    seed: int = 0
    # The frame codes are decoded in: "world" (the dataset's, as published) or "view" (each shape
    # re-expressed relative to its input view; see flowsdf.data.frames). Applied when data is loaded.
    frame: str = "world"
    data: DataConfig = field(default_factory=DataConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    stage1: TrainConfig = field(default_factory=TrainConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    velocity: VelocityConfig = field(default_factory=VelocityConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    phase1: DistillConfig = field(default_factory=DistillConfig)
    # Phase 2 continues at Stage 1's final temperature. Every part starts trained, and the flow
    # does not tolerate much: at lr 1e-4 the seed loss climbs from 0.014 to 0.08 within 10 epochs,
    # so a short warm-up (5 epochs of the seed) leads to a peak of 5e-5 (README, "Measured so far").
    phase2: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=200, lr=5e-5, warmup_steps=35, tau_start=0.01, tau_end=0.01)
    )


def seed_preset() -> Config:
    """The published protocol: 50 shapes x 1 view, 64x64, 48 samples, 300 epochs.

    The no-grad argmin search runs in bfloat16 (the gradient pass stays float32): 2-4x faster on
    GPUs and bf16-capable CPUs; see RenderConfig.search_dtype.
    """
    cfg = Config(preset="seed")
    cfg.render = RenderConfig(search_dtype="bfloat16")
    return cfg


def quick_preset() -> Config:
    """The default main job: a meaningful result in under 10 minutes on a 2-core CPU."""
    cfg = Config(preset="quick")
    cfg.data = DataConfig(image_size=32, train_views=1, gt_samples=128)
    cfg.encoder = EncoderConfig(image_size=32)
    cfg.render = RenderConfig(n_samples=32, search_dtype="bfloat16")
    cfg.stage1 = TrainConfig(epochs=60, batch_size=8, lr=1e-3, figure_every=20)
    cfg.conditioner = ConditionerConfig(image_size=32)
    cfg.phase1 = DistillConfig(iterations=300)
    cfg.phase2 = TrainConfig(epochs=30, batch_size=8, lr=2e-4, warmup_steps=35, tau_start=0.01, tau_end=0.01, figure_every=10)
    return cfg


def tiny_preset() -> Config:
    """Seconds on a CPU, for tests: a handful of small shapes, 16x16, 12 samples."""
    cfg = Config(preset="tiny")
    cfg.data = DataConfig(n_train_shapes=4, n_heldout_shapes=2, novel_views=2, image_size=16, gt_samples=64)
    cfg.encoder = EncoderConfig(image_size=16, fc_hidden=64)
    cfg.render = RenderConfig(n_samples=12)
    # Constant tau so that epoch losses are comparable (the test checks that training lowers it).
    cfg.stage1 = TrainConfig(epochs=2, batch_size=1, lr=1e-3, tau_start=0.05, tau_end=0.05, figure_every=1, figure_shapes=2)
    cfg.conditioner = ConditionerConfig(image_size=16, channels=(16, 32, 32, 64), embed_dim=64)
    cfg.velocity = VelocityConfig(cond_dim=64, hidden=128, depth=6, mlp_ratio=2, time_embed_dim=64)
    cfg.phase1 = DistillConfig(iterations=40, batch_size=4, lr=1e-3)
    cfg.phase2 = TrainConfig(epochs=2, batch_size=1, lr=1e-4, tau_start=0.05, tau_end=0.05, figure_every=1, figure_shapes=2)
    return cfg


PRESETS = {"seed": seed_preset, "quick": quick_preset, "tiny": tiny_preset}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise FlowSDFError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --- JSON round trip ----------------------------------------------------------------------------


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _build(cls: type, value: Any) -> Any:
    """Rebuild a dataclass (recursively) from plain JSON values, checking field names."""
    if dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            raise FlowSDFError(f"config: expected an object for {cls.__name__}, got {value!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise FlowSDFError(f"config: unknown field(s) {sorted(unknown)} in {cls.__name__}")
        return cls(**{k: _build(hints[k], v) for k, v in value.items()})
    origin = typing.get_origin(cls)
    if origin is tuple:
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def from_dict(d: dict[str, Any]) -> Config:
    return _build(Config, d)


def dumps(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2)


def loads(text: str) -> Config:
    try:
        return from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        raise FlowSDFError(f"config is not valid: {e}") from e
