"""Models built from a config, each initialised from the config's seed."""

from __future__ import annotations

import torch

from flowsdf.config import Config
from flowsdf.models.conditioner import ImageConditioner
from flowsdf.models.encoder import CNNEncoder
from flowsdf.models.sdf import SDFDecoder
from flowsdf.models.velocity import VelocityNet


def build_stage1(cfg: Config) -> tuple[CNNEncoder, SDFDecoder]:
    """Stage-1 models initialised from cfg.seed (the caller's global RNG state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return CNNEncoder(cfg.encoder), SDFDecoder(cfg.decoder)


def build_flow(cfg: Config) -> tuple[ImageConditioner, VelocityNet]:
    """Stage-2 models initialised from cfg.seed (the caller's global RNG state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return ImageConditioner(cfg.conditioner), VelocityNet(cfg.velocity)
