"""Run configuration: one dataclass tree, named presets, and its JSON round trip.

A run folder stores its `Config` as `config.json`; every later command (resume, eval, the next
stage) rebuilds the exact models from it. Presets are small functions, so the differences
between `tiny`, `quick` and `seed` read as a diff.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from flowsdf.data.dataset import DataConfig
from flowsdf.data.frames import FRAMES
from flowsdf.errors import FlowSDFError
from flowsdf.flow import FlowConfig
from flowsdf.models.conditioner import ConditionerConfig
from flowsdf.models.dinov2 import DINOv2Config
from flowsdf.models.dit import DiTConfig
from flowsdf.models.encoder import EncoderConfig
from flowsdf.models.sdf import DecoderConfig
from flowsdf.models.triplane import TriplaneConfig
from flowsdf.models.triplane_encoder import TriplaneEncoderConfig
from flowsdf.models.velocity import VelocityConfig
from flowsdf.models.vit import ViTConfig
from flowsdf.render.rays import RenderConfig
from flowsdf.text.encoder import TextConfig
from flowsdf.schema import (
    ANY_BOOL,
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    build,
    int_range,
    one_of,
)

# --- The swappable parts: each section names its kind and holds every kind's own settings ---------
# (flowsdf.build makes the models). A part's widths that other parts fix — the image size (the
# data's), the code's shape (the decoder's), the condition's width (the conditioner's) — are not
# settings of that part: they are passed to it, so there is one place to set each.


@dataclass
class DecoderKinds:
    """The SDF decoder, which also fixes the code's shape (every encoder and flow produces it).

    mlp: the seed's DeepSDF MLP on a 128-d code. triplane: a small latent triplane
    (3, C, R, R) upsampled to feature planes and read by a small Softplus MLP (models/triplane.py).
    """

    kind: str = "mlp"
    mlp: DecoderConfig = field(default_factory=DecoderConfig)
    triplane: TriplaneConfig = field(default_factory=TriplaneConfig)

    RULES = {"kind": one_of("mlp", "triplane")}

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.mlp.latent_dim,) if self.kind == "mlp" else self.triplane.latent_shape


@dataclass
class EncoderKinds:
    """Where Stage 1's codes come from.

    picture (the seed's): an encoder maps the shape's input picture to its code; its architecture
    follows the decoder's code: the CNN (cnn) for the MLP decoder, a U-Net whose map is the view
    frame's YZ plane (triplane) for the triplane decoder. table: one code per training shape,
    fitted with the decoder to every supervising view of its shape (an auto-decoder,
    models/codes.py): the teacher of the generative recipe, which has no picture encoder of its own.
    """

    kind: str = "picture"
    cnn: EncoderConfig = field(default_factory=EncoderConfig)
    triplane: TriplaneEncoderConfig = field(default_factory=TriplaneEncoderConfig)
    table_init_std: float = 0.01  # a table's codes start as N(0, std^2) (DeepSDF's 0.01)

    RULES = {"kind": one_of("picture", "table"), "table_init_std": NON_NEGATIVE}


@dataclass
class ConditionerKinds:
    """The flow's image conditioner: condition tokens (B, N, C) from a picture.

    cnn: the seed's CNN, one token. vit: a small ViT trained from scratch, a token per patch.
    dinov2: DINOv2-Small, frozen, from the file at `weights` (a Hugging Face folder, Meta's .pth or
    a .safetensors; nothing is downloaded: models/dinov2.py says where to get it).
    """

    kind: str = "cnn"
    cnn: ConditionerConfig = field(default_factory=ConditionerConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    dinov2: DINOv2Config = field(default_factory=DINOv2Config)
    weights: str = ""  # the dinov2 kind's weights file or folder

    RULES = {"kind": one_of("cnn", "vit", "dinov2"), "weights": Rule("a path", lambda v: True)}

    @property
    def token_dim(self) -> int:
        return {"cnn": self.cnn.embed_dim, "vit": self.vit.hidden, "dinov2": self.dinov2.hidden_size}[self.kind]


@dataclass
class VelocityKinds:
    """The flow's velocity net. mlp: the seed's AdaLN MLP on the pooled condition. dit: a DiT over
    latent tokens, time by adaLN-Zero, the condition tokens by cross-attention (models/dit.py)."""

    kind: str = "mlp"
    mlp: VelocityConfig = field(default_factory=VelocityConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)

    RULES = {"kind": one_of("mlp", "dit")}


@dataclass
class TextTrainConfig:
    """The text-conditioned flow (`flowsdf train --stage text`): conditional flow matching from a
    shape's captions (flowsdf.data.captions) to its Stage-1 code, with condition dropout for
    classifier-free guidance."""

    iterations: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    captions_per_shape: int = 8  # training captions drawn per shape (varied templates and words)
    cond_dropout: float = 0.1  # share of rows trained with the null condition
    guidance: float = 3.0  # W that `flowsdf generate` and pipe.generate use by default

    RULES = {"iterations": int_range(1, 10_000_000), "batch_size": int_range(1, 65_536), "lr": POSITIVE,
             "captions_per_shape": int_range(1, 64), "cond_dropout": FRACTION, "guidance": Rule(
                 "a number from 0 to 100", lambda v: 0 <= v <= 100)}


@dataclass
class SDFSRNTerms:
    """SDF-SRN's training signals beyond the silhouette BCE (flowsdf.train.losses), each off at
    weight 0. Measured on held-out shapes (docs/experiments.md): no effect at 25 % more time per
    image, so every preset leaves them off; they stay for experiments."""

    eikonal_weight: float = 0.0  # (|grad f| - 1)^2 at random points in the bounding sphere
    eikonal_points: int = 256  # per code and step
    bg_bound_weight: float = 0.0  # L1 violation of the background rays' SDF lower bound
    bg_bound_rays: int = 128  # background rays per view and step
    bg_bound_depths: int = 4  # random depths per ray

    RULES = {"eikonal_weight": NON_NEGATIVE, "eikonal_points": int_range(1, 1_000_000), "bg_bound_weight": NON_NEGATIVE,
             "bg_bound_rays": int_range(1, 1_000_000), "bg_bound_depths": int_range(1, 1024)}


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
    # the phase keeps (its checkpoint, figures and summary). 0 = off: the last weights. Measured on
    # the seed's Phase 2: it ends where the plain recipe does (docs/experiments.md).
    ema_decay: float = 0.0
    # Stage 3: weight of the shaded-RGB L1 inside the mask beside the silhouette BCE (train/rgb.py);
    # 0 = silhouette only, exactly as before (no albedo head, no shading).
    rgb_weight: float = 0.0
    figure_every: int = 25  # epochs between prediction-grid figures (always at the end too)
    figure_shapes: int = 6  # shapes shown in each figure
    # Each training shape's code, predicted from its first input view, is supervised by the
    # silhouettes of all its training views (data.train_views) instead of each view being a sample.
    all_views: bool = False
    # Weight of the mean squared code beside the loss (DeepSDF's prior on a code table: keeps the
    # codes a compact distribution for a flow to learn). 0 = off (the seed).
    code_l2: float = 0.0
    # Flow Phase 2: K samples per shape, the loss of the best one only (train/loop.best_of_k_loss):
    # the samples stay free to differ where the supervising views allow it. 1 = the seed.
    best_of: int = 1
    # Capture the whole step (search, gradient pass, backward, clipping, Adam) in one CUDA graph
    # (train/graphed.py): the cure for a launch-bound small batch on a GPU; on a CPU the same step
    # runs eagerly. Needs render.search=static and a step without host work (silhouettes only, no
    # SDF-SRN terms, one process): Stage 1, not Phase 2 (it draws noise on the host).
    graph: bool = False
    sdfsrn: SDFSRNTerms = field(default_factory=SDFSRNTerms)

    RULES = {
        "epochs": int_range(1, 1_000_000), "batch_size": int_range(1, 65_536), "lr": POSITIVE,
        "lr_final_fraction": FRACTION, "warmup_steps": COUNT,
        "lr_scale": Rule("a map of module names to numbers >= 0", lambda v: all(x >= 0 for x in v.values())),
        "tau_start": POSITIVE, "tau_end": POSITIVE, "grad_clip": NON_NEGATIVE,
        "ema_decay": Rule("a number in [0, 1)", lambda v: 0 <= v < 1), "rgb_weight": NON_NEGATIVE,
        "figure_every": int_range(1, 1_000_000), "figure_shapes": int_range(1, 64), "all_views": ANY_BOOL,
        "code_l2": NON_NEGATIVE, "best_of": int_range(1, 64), "graph": ANY_BOOL,
    }


@dataclass
class DistillConfig:
    """Flow Phase 1: fit the flow to the frozen Stage-1 encoder's codes (no rendering)."""

    iterations: int = 3000
    batch_size: int = 50  # the seed's whole training set per step
    lr: float = 3e-4
    ablation: bool = True  # also distil a flow without noise scaling, to measure the collapse

    RULES = {"iterations": int_range(1, 10_000_000), "batch_size": int_range(1, 65_536), "lr": POSITIVE,
             "ablation": ANY_BOOL}


@dataclass
class Stage3Config:
    """Stage 3 of `flowsdf reproduce`: Phase 2 again with shaded RGB beside the silhouettes."""

    rgb_weight: float = 1.0  # weight of the RGB L1 (chosen once, docs/experiments.md: not tuned)
    # The albedo head is the one new part of that phase, whose other parts are trained: it gets
    # this multiple of the phase's lr (at 1x it stays grey for the whole short phase).
    albedo_lr_scale: float = 100.0

    RULES = {"rgb_weight": NON_NEGATIVE, "albedo_lr_scale": NON_NEGATIVE}


@dataclass
class EvalConfig:
    """How `flowsdf eval` and `flowsdf reproduce` score a run."""

    mesh_resolution: int = 64  # marching-cubes grid of the 3-D metrics (Chamfer, F-score)
    # Training shapes scored in 3-D (the first N; 0 = all): each takes ~0.5 s on a 2-core CPU,
    # so a preset with thousands of shapes scores a subset; held-out shapes are always all scored.
    train_shapes: int = 0

    RULES = {"mesh_resolution": int_range(8, 512), "train_shapes": COUNT}


@dataclass
class Config:
    preset: str = "seed"
    seed: int = 0
    # The frame codes are decoded in: "world" (the dataset's, as published) or "view" (each shape
    # re-expressed relative to its input view; see flowsdf.data.frames). Applied when data is loaded.
    frame: str = "world"
    data: DataConfig = field(default_factory=DataConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    encoder: EncoderKinds = field(default_factory=EncoderKinds)
    decoder: DecoderKinds = field(default_factory=DecoderKinds)
    stage1: TrainConfig = field(default_factory=TrainConfig)
    conditioner: ConditionerKinds = field(default_factory=ConditionerKinds)
    velocity: VelocityKinds = field(default_factory=VelocityKinds)
    flow: FlowConfig = field(default_factory=FlowConfig)
    phase1: DistillConfig = field(default_factory=DistillConfig)
    # Phase 2 continues at Stage 1's final temperature. Every part starts trained, and the flow
    # does not tolerate much: at lr 1e-4 the seed loss climbs from 0.014 to 0.08 within 10 epochs,
    # so a short warm-up (5 epochs of the seed) leads to a peak of 5e-5 (docs/experiments.md).
    phase2: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=200, lr=5e-5, warmup_steps=35, tau_start=0.01, tau_end=0.01)
    )
    stage3: Stage3Config = field(default_factory=Stage3Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Text to 3-D: the text encoder (small: trained here; clip: frozen, from a local folder) and
    # the training of the text-conditioned flow over the Stage-1 codes.
    text: TextConfig = field(default_factory=TextConfig)
    text_velocity: VelocityKinds = field(default_factory=VelocityKinds)  # the text flow's own velocity net
    text_train: TextTrainConfig = field(default_factory=TextTrainConfig)

    RULES = {"preset": Rule("a preset name", lambda v: v in PRESETS), "seed": COUNT, "frame": one_of(*FRAMES)}


def _fits(cfg: Config) -> list[str]:
    """Agreements between sections that the models need (each a message, empty when all hold)."""
    problems = []
    size = cfg.data.image_size
    strided = []
    if cfg.encoder.kind == "picture":
        strided = [("encoder.cnn", len(cfg.encoder.cnn.channels))] if cfg.decoder.kind == "mlp" else \
            [("encoder.triplane", len(cfg.encoder.triplane.channels) - 1)]
    elif not cfg.stage1.all_views or cfg.data.train_views < 2:
        problems.append("encoder.kind=table fits each shape's code to all its views: it needs data.train_views >= 2 "
                        "and stage1.all_views=true")
    if cfg.conditioner.kind == "cnn":
        strided.append(("conditioner.cnn", len(cfg.conditioner.cnn.channels)))
    for name, n in strided:
        if size % 2**n:
            problems.append(f"data.image_size ({size}) must be a multiple of {2**n} for {name}.channels "
                            f"({n} stride-2 convolutions)")
    if cfg.stage1.best_of > 1:
        problems.append("stage1.best_of must be 1: an encoder gives one code per picture (best-of-K is for Phase 2's flow)")
    if cfg.phase2.best_of > 1 and (not cfg.phase2.all_views or cfg.phase2.rgb_weight > 0):
        problems.append("phase2.best_of > 1 scores each sample on all of a shape's views with silhouettes only: "
                        "it needs phase2.all_views=true and phase2.rgb_weight=0")
    problems += _graph_fits(cfg)
    if cfg.conditioner.kind == "vit" and size % cfg.conditioner.vit.patch_size:
        problems.append(f"data.image_size ({size}) must be a multiple of conditioner.vit.patch_size "
                        f"({cfg.conditioner.vit.patch_size})")
    if cfg.text.kind == "small" and cfg.text.width % cfg.text.heads:
        problems.append(f"text.width ({cfg.text.width}) must be a multiple of text.heads ({cfg.text.heads})")
    if cfg.text.kind == "clip" and not cfg.text.clip_path:
        problems.append("text.kind=clip needs text.clip_path=FOLDER (a local CLIP model folder)")
    if cfg.conditioner.kind == "dinov2" and not cfg.conditioner.weights:
        problems.append("conditioner.kind=dinov2 needs conditioner.weights=PATH (a local DINOv2-Small file or folder)")
    cnn = cfg.conditioner.cnn
    if cfg.conditioner.kind == "cnn" and cnn.group_norm:
        for c in cnn.channels:
            if c % min(cnn.norm_groups, c):
                problems.append(f"conditioner.cnn.channels: {c} is not divisible into conditioner.cnn.norm_groups "
                                f"({cnn.norm_groups}) groups")
    if cfg.decoder.mlp.hidden <= cfg.decoder.mlp.latent_dim + 3:
        problems.append(f"decoder.mlp.hidden must exceed latent_dim + 3 ({cfg.decoder.mlp.latent_dim + 3}) for the "
                        f"skip layer, got {cfg.decoder.mlp.hidden}")
    tri = cfg.decoder.triplane
    if cfg.decoder.kind == "triplane":
        ratio = tri.resolution // tri.latent_resolution
        if tri.resolution % tri.latent_resolution or ratio & (ratio - 1):
            problems.append(f"decoder.triplane.resolution ({tri.resolution}) must be latent_resolution "
                            f"({tri.latent_resolution}) times a power of 2")
    for name in ("velocity", "text_velocity"):
        kinds = getattr(cfg, name)
        if kinds.kind != "dit":
            continue
        dit, shape = kinds.dit, cfg.decoder.latent_shape
        if len(shape) == 1 and shape[0] % dit.tokens:
            problems.append(f"{name}.dit.tokens ({dit.tokens}) must divide the code's width ({shape[0]})")
        if len(shape) == 4 and shape[2] % dit.patch_size:
            problems.append(f"{name}.dit.patch_size ({dit.patch_size}) must divide the triplane's latent "
                            f"resolution ({shape[2]})")
        if dit.hidden % dit.heads:
            problems.append(f"{name}.dit.hidden ({dit.hidden}) must be divisible by {name}.dit.heads ({dit.heads})")
    return problems


def _graph_fits(cfg: Config) -> list[str]:
    """What a step captured in a CUDA graph (TrainConfig.graph) needs: static shapes, no host work."""
    problems = []
    if cfg.phase2.graph:
        problems.append("phase2.graph is not supported: Phase 2 draws its flow's noise on the host every step")
    tc = cfg.stage1
    if tc.graph and cfg.render.search != "static":
        problems.append(f"stage1.graph needs render.search=static (shapes that do not depend on the data), "
                        f"got {cfg.render.search}")
    if tc.graph and (tc.rgb_weight > 0 or tc.sdfsrn.eikonal_weight > 0 or tc.sdfsrn.bg_bound_weight > 0):
        problems.append("stage1.graph captures the silhouette step only: it needs stage1.rgb_weight=0 and no "
                        "SDF-SRN terms")
    if tc.graph and cfg.encoder.kind != "picture":
        problems.append("stage1.graph needs encoder.kind=picture (a code table looks its rows up on the host)")
    return problems


def seed_preset() -> Config:
    """The published protocol: 50 shapes x 1 view, 64x64, 48 samples, 300 epochs.

    The no-grad argmin search runs in bfloat16 (the gradient pass stays float32): 2-4x faster on
    GPUs and bf16-capable CPUs; see RenderConfig.search_dtype. It is coarse-to-fine (every 4th
    sample, then full resolution near the surface; RenderConfig.search): measured against the
    exhaustive search in docs/speed.md.
    """
    cfg = Config(preset="seed")
    cfg.render = RenderConfig(search_dtype="bfloat16", search="coarse")
    return cfg


def quick_preset() -> Config:
    """The default main job: a meaningful result in under 10 minutes on a 2-core CPU."""
    cfg = Config(preset="quick")
    cfg.data = DataConfig(image_size=32, train_views=1, gt_samples=128)
    cfg.render = RenderConfig(n_samples=32, search_dtype="bfloat16", search="coarse")
    cfg.stage1 = TrainConfig(epochs=60, batch_size=8, lr=1e-3, figure_every=20)
    cfg.phase1 = DistillConfig(iterations=300)
    cfg.phase2 = TrainConfig(epochs=30, batch_size=8, lr=2e-4, warmup_steps=35, tau_start=0.01, tau_end=0.01, figure_every=10)
    cfg.eval = EvalConfig(mesh_resolution=32)  # keeps the report inside the CPU budget
    return cfg


def shapes_preset() -> Config:
    """More data in the world frame (docs/experiments.md, "Data scale"): quick's resolution with
    twenty times the shapes, one view each (4x quick's training images). Its Stage 1 trains in
    5 min on a free 2-core CPU (held-out 3-D IoU 0.675 against quick's 0.647)."""
    cfg = quick_preset()
    cfg.preset = "shapes"
    cfg.data.n_train_shapes = 1000
    cfg.stage1 = TrainConfig(epochs=12, batch_size=8, lr=1e-3, figure_every=4)
    cfg.phase2 = TrainConfig(epochs=2, batch_size=8, lr=2e-4, warmup_steps=35, tau_start=0.01, tau_end=0.01, figure_every=1)
    cfg.eval = EvalConfig(mesh_resolution=64, train_shapes=200)
    return cfg


def views_preset() -> Config:
    """The view frame with several views (docs/experiments.md, "Giving the encoder its camera"): the view frame, so the
    input camera is known by construction (in the world frame no single-picture method can expect
    more than ~0.73 held-out 3-D IoU on this dataset), and three supervising views per training
    shape, so depth is constrained. Stage 1 is the `view-mv3-1000` probe: 12 min on a shared 2-core
    CPU, held-out IoU 0.893 input (0.938 with 20 refinement steps) / 0.810 novel, 3-D IoU 0.701.
    All of its training (Stages 1-3) takes ~20 min on a free 2-core CPU."""
    cfg = quick_preset()
    cfg.preset = "views"
    cfg.frame = "view"
    cfg.data.n_train_shapes = 1000
    cfg.data.train_views = 3
    cfg.stage1 = TrainConfig(epochs=8, batch_size=8, lr=1e-3, figure_every=4, all_views=True)
    cfg.phase2 = TrainConfig(epochs=2, batch_size=8, lr=2e-4, warmup_steps=35, tau_start=0.01, tau_end=0.01, figure_every=1,
                             all_views=True)
    cfg.eval = EvalConfig(mesh_resolution=64, train_shapes=200)
    return cfg


def views_gen_preset() -> Config:
    """`views` with the flow trained as a generative model (docs/scaling.md, "A flow that generates"):
    Stage 1 is a table of codes, each fitted to all three views of its shape (the teacher; it has no
    picture encoder, so `reconstruct` uses the flow); the flow learns p(code | picture) by
    conditional flow matching with condition dropout for guidance (best W measured: 1); Phase 2
    back-propagates the best of 8 samples against all views for 3 epochs, so samples stay apart;
    sampling starts at 1.5 x the training noise, and a sample whose input-view silhouette falls
    below 0.95 of the noiseless sample's is drawn again (up to 8 draws: flowsdf.consistency). On
    fresh held-out shapes its samples of one picture agree with it and differ where it is silent
    (best-of-8 - mean-of-8 3-D IoU 0.04), their mean within 0.02 of `views`' deterministic
    encoder. Stage 1 17 min, the flow ~40 min (2-core CPU)."""
    cfg = views_preset()
    cfg.preset = "views-gen"
    cfg.encoder.kind = "table"
    cfg.stage1 = dataclasses.replace(cfg.stage1, code_l2=1e-4)
    cfg.flow = dataclasses.replace(cfg.flow, sampling_weight=0.0, cond_dropout=0.1, time_sampling="logit_normal",
                                   guidance=1.0, temperature=1.5, consistency=0.95, consistency_tries=8)
    # A distribution takes longer to learn than a map: ten times `views`' Phase 1.
    cfg.phase1 = dataclasses.replace(cfg.phase1, iterations=3000, ablation=False)
    cfg.phase2 = dataclasses.replace(cfg.phase2, epochs=3, best_of=8)
    return cfg


def triplane_preset() -> Config:
    """The best Stage 1 measured so far (docs/scaling.md): the `views` data and frame with the
    triplane decoder (16-channel 64^2 feature planes) and its U-Net encoder. At equal CPU time it
    beats the `views` preset's global code on every held-out figure (16 epochs, 20 min on a shared
    2-core CPU: 3-D IoU 0.716 against 0.703 in 33 min, input-view IoU 0.982 against 0.889). Its
    flow keeps the MLP velocity net: on this CPU a DiT over the planes' patches ran 15 Phase-1
    iterations in 7 min, and even the MLP needs far more than the preset's Phase 1 to learn the
    6,144-number latent, so use this run's encoder for `reconstruct` (`--model cnn`)."""
    cfg = views_preset()
    cfg.preset = "triplane"
    cfg.decoder.kind = "triplane"
    cfg.decoder.triplane = TriplaneConfig(channels=16, upsampler_channels=16)
    cfg.stage1 = TrainConfig(epochs=16, batch_size=8, lr=1e-3, figure_every=4, all_views=True)
    return cfg


def triplane_gpu_preset() -> Config:
    """`triplane` sized for one GPU (not yet run on one): ten times the shapes, the default 32-channel
    planes, batch 32, the GPU training path (the static search in TF32; docs/speed.md), and a DiT
    over the planes' patches with ten times the Phase-1 iterations for the flow."""
    cfg = triplane_preset()
    cfg.preset = "triplane-gpu"
    cfg.velocity.kind = cfg.text_velocity.kind = "dit"
    cfg.phase1 = dataclasses.replace(cfg.phase1, iterations=3000)
    cfg.data.n_train_shapes = 10_000
    cfg.decoder.triplane = TriplaneConfig()
    cfg.render.search, cfg.render.search_dtype = "static", "tf32"
    cfg.stage1 = TrainConfig(epochs=16, batch_size=32, lr=1e-3, figure_every=4, all_views=True)
    cfg.phase2 = dataclasses.replace(cfg.phase2, batch_size=32)
    return cfg


def tiny_preset() -> Config:
    """Seconds on a CPU, for tests: a handful of small shapes, 16x16, 12 samples."""
    cfg = Config(preset="tiny")
    cfg.data = DataConfig(n_train_shapes=4, n_heldout_shapes=2, novel_views=2, image_size=16, gt_samples=64)
    cfg.encoder.cnn = EncoderConfig(fc_hidden=64)
    cfg.render = RenderConfig(n_samples=12)
    # Constant tau so that epoch losses are comparable (the test checks that training lowers it).
    cfg.stage1 = TrainConfig(epochs=2, batch_size=1, lr=1e-3, tau_start=0.05, tau_end=0.05, figure_every=1, figure_shapes=2)
    cfg.conditioner.cnn = ConditionerConfig(channels=(16, 32, 32, 64), embed_dim=64)
    cfg.velocity.mlp = VelocityConfig(hidden=128, depth=6, mlp_ratio=2, time_embed_dim=64)
    cfg.text_velocity = copy.deepcopy(cfg.velocity)
    cfg.phase1 = DistillConfig(iterations=40, batch_size=4, lr=1e-3)
    cfg.phase2 = TrainConfig(epochs=2, batch_size=1, lr=1e-4, tau_start=0.05, tau_end=0.05, figure_every=1, figure_shapes=2)
    cfg.eval = EvalConfig(mesh_resolution=16)
    return cfg


PRESETS = {"seed": seed_preset, "quick": quick_preset, "shapes": shapes_preset, "views": views_preset,
           "views-gen": views_gen_preset, "triplane": triplane_preset, "triplane-gpu": triplane_gpu_preset,
           "tiny": tiny_preset}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise FlowSDFError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --- JSON round trip ----------------------------------------------------------------------------


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# Runs written before the configuration kinds (decoder.kind, ...) kept each section's one kind's
# settings at its top level; these moved into the kind's own subsection, unchanged in meaning.
_LEGACY_MOVES = {
    "encoder": ("cnn", ("channels", "fc_hidden")),
    "decoder": ("mlp", ("hidden", "latent_dim")),
    "conditioner": ("cnn", ("channels", "embed_dim", "group_norm", "norm_groups")),
    "velocity": ("mlp", ("depth", "hidden", "mlp_ratio", "time_embed_dim")),
}
_LEGACY_DERIVED = {"encoder": ("image_size", "latent_dim"), "conditioner": ("image_size",),
                   "velocity": ("cond_dim", "latent_dim")}  # now derived from other sections
_LEGACY_SDFSRN = ("eikonal_weight", "eikonal_points", "bg_bound_weight", "bg_bound_rays", "bg_bound_depths")
_LEGACY_RENAMED = {"render": {"refine_margin": "fine_margin", "refine_tau": "fine_tau"}}


def upgrade_legacy(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict in the layout of older runs, in today's layout (a copy; today's unchanged).
    Only exact moves and renames: a setting this version no longer has (Fourier xyz features of
    the decoder) is one FlowSDFError, never dropped silently."""
    if not isinstance(d, dict):
        raise FlowSDFError(f"config must be a JSON object, got {type(d).__name__}")
    d = json.loads(json.dumps(d))  # a deep copy of plain JSON values
    for section, (kind, keys) in _LEGACY_MOVES.items():
        part = d.get(section)
        if not isinstance(part, dict) or not any(k in part for k in keys):
            continue
        sub = part.setdefault(kind, {})
        for key in keys:
            if key in part:
                sub[key] = part.pop(key)
        for key in _LEGACY_DERIVED.get(section, ()):
            part.pop(key, None)
    decoder = d.get("decoder")
    if isinstance(decoder, dict) and decoder.pop("xyz_frequencies", 0):
        raise FlowSDFError("config: this run's decoder uses Fourier xyz features (decoder.xyz_frequencies > 0), "
                           "which this version of flowsdf no longer has; retrain it")
    for phase in ("stage1", "phase2"):
        part = d.get(phase)
        if isinstance(part, dict) and any(k in part for k in _LEGACY_SDFSRN):
            terms = part.setdefault("sdfsrn", {})
            for key in _LEGACY_SDFSRN:
                if key in part:
                    terms[key] = part.pop(key)
    for section, names in _LEGACY_RENAMED.items():
        part = d.get(section)
        for old, new in names.items():
            if isinstance(part, dict) and old in part:
                part[new] = part.pop(old)
    if "velocity" in d and "text_velocity" not in d:  # text flows once shared the image flow's velocity section
        d["text_velocity"] = json.loads(json.dumps(d["velocity"]))
    return d


def from_dict(d: dict[str, Any]) -> Config:
    """A checked Config from plain JSON values (older runs' layout upgraded first: upgrade_legacy):
    every field's type and range, then the agreements between sections; a problem is one
    FlowSDFError line naming the field."""
    cfg = build(Config, upgrade_legacy(d))
    problems = _fits(cfg)
    if problems:
        raise FlowSDFError(f"config: {problems[0]}")
    return cfg


def dumps(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2)


def loads(text: str) -> Config:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise FlowSDFError(f"config is not valid JSON: {e}") from e
    return from_dict(d)
