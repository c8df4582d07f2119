"""Models built from a config, by kind, each initialised from the config's seed.

The one place a config's kinds become modules: every caller (training, loading a run, benchmarks)
asks for the parts here and never looks at a kind itself. The widths one part fixes for another
are passed here: the data's image size, the decoder's code shape, the conditioner's token width.
"""

from __future__ import annotations

import torch
from torch import nn

from flowsdf.config import Config
from flowsdf.models.codes import CodeTable
from flowsdf.models.conditioner import ImageConditioner
from flowsdf.models.dinov2 import DINOv2Conditioner
from flowsdf.models.dit import DiTVelocity
from flowsdf.models.encoder import CNNEncoder
from flowsdf.models.sdf import SDFDecoder
from flowsdf.models.triplane import TriplaneDecoder
from flowsdf.models.triplane_encoder import TriplaneEncoder
from flowsdf.models.velocity import VelocityNet
from flowsdf.models.vit import ViTConditioner
from flowsdf.text.encoder import build_text_encoder
from flowsdf.text.tokenizer import WordTokenizer


def build_decoder(cfg: Config) -> nn.Module:
    """The SDF decoder of `decoder.kind` (not seeded: callers seed; see build_stage1)."""
    if cfg.decoder.kind == "mlp":
        return SDFDecoder(cfg.decoder.mlp)
    return TriplaneDecoder(cfg.decoder.triplane)


def build_encoder(cfg: Config) -> nn.Module:
    """Stage 1's encoder for the decoder's code shape (not seeded): a picture encoder, or a table of
    per-shape codes (its pictures are registered by Stage 1's training)."""
    size, shape = cfg.data.image_size, cfg.decoder.latent_shape
    if cfg.encoder.kind == "table":
        return CodeTable(cfg.data.n_train_shapes, shape, cfg.encoder.table_init_std)
    if cfg.decoder.kind == "mlp":
        return CNNEncoder(cfg.encoder.cnn, size, shape[0])
    return TriplaneEncoder(cfg.encoder.triplane, size, shape, cfg.decoder.triplane.bound, cfg.data.fov_deg,
                           cfg.data.cam_distance)


def build_conditioner(cfg: Config) -> nn.Module:
    """The flow's conditioner of `conditioner.kind`: images -> tokens (B, N, token_dim) (not seeded)."""
    kind, size = cfg.conditioner.kind, cfg.data.image_size
    if kind == "cnn":
        return ImageConditioner(cfg.conditioner.cnn, size)
    if kind == "vit":
        return ViTConditioner(cfg.conditioner.vit, size)
    return DINOv2Conditioner(cfg.conditioner.weights, cfg.conditioner.dinov2)


def build_velocity(cfg: Config) -> nn.Module:
    """The velocity net of `velocity.kind` for the decoder's code shape (not seeded)."""
    shape, cond_dim = cfg.decoder.latent_shape, cfg.conditioner.token_dim
    if cfg.velocity.kind == "mlp":
        return VelocityNet(cfg.velocity.mlp, shape, cond_dim)
    return DiTVelocity(cfg.velocity.dit, shape, cond_dim)


def build_text_flow(cfg: Config, tokenizer: WordTokenizer | None) -> tuple[nn.Module, nn.Module]:
    """The text encoder of `text.kind` (with `tokenizer` for the small one) and a velocity net of
    `text_velocity.kind` reading its tokens, initialised from cfg.seed (not the image flow's: seed + 3)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 3)
        text = build_text_encoder(cfg.text, tokenizer)
        shape, width = cfg.decoder.latent_shape, text.width
        kinds = cfg.text_velocity
        if kinds.kind == "mlp":
            return text, VelocityNet(kinds.mlp, shape, width)
        return text, DiTVelocity(kinds.dit, shape, width)


def build_stage1(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """Stage-1 encoder and decoder initialised from cfg.seed (the caller's global RNG state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_encoder(cfg), build_decoder(cfg)


def build_flow(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """Stage-2 conditioner and velocity net initialised from cfg.seed (the caller's global RNG state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return build_conditioner(cfg), build_velocity(cfg)
