"""The albedo head (Stage 3): latent code -> one RGB albedo per shape.

Our data gives every shape a single colour (`dataset.py`: albedo uniform in [0.35, 1] per
channel, one per shape), so a colour *field* over xyz would spend capacity on variation that
does not exist; a small MLP on the code is the model that matches the data. The output goes
through a sigmoid so it stays a valid reflectance in (0, 1), and the last layer starts at zero so
every shape starts mid-grey (0.5) rather than at a random colour.

The code is layer-normalised (no parameters) on the way in: trained codes are tiny (norm ~0.4
over 128 dimensions, ~0.04 per entry), so on raw codes the first layer's output is its bias, the
same for every shape, and the head needs thousands of steps to tell colours apart (measured: still
grey for every shape after 140 Stage-1 steps at lr 1e-3). A head that is new in a phase whose
other parts are pre-trained (Flow Phase 2, lr 2e-4) also needs a larger share of the lr
(TrainConfig.lr_scale = {"albedo": ...}).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# The module name under which a phase trains and checkpoints the head.
MODULE = "albedo"


class AlbedoHead(nn.Module):
    def __init__(self, latent_dim: int = 128, hidden: int = 64):
        super().__init__()
        self.l1 = nn.Linear(latent_dim, hidden)
        self.l2 = nn.Linear(hidden, 3)
        nn.init.zeros_(self.l2.weight)
        nn.init.zeros_(self.l2.bias)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, *latent) -> albedo (B, 3) in (0, 1); a code of any shape is read as one vector of D numbers."""
        z = z.flatten(1)  # (B, D)
        z = F.layer_norm(z, z.shape[-1:])  # (B, D) unit scale whatever the codes' norm
        return torch.sigmoid(self.l2(F.silu(self.l1(z))))  # (B, 3)


def build_albedo(latent_dim: int, seed: int) -> AlbedoHead:
    """An albedo head initialised from `seed` (the caller's global RNG state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)  # +0 / +1 seed the Stage-1 and flow models
        return AlbedoHead(latent_dim)
