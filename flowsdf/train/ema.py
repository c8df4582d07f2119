"""Exponential moving average of the weights of a phase's modules.

With a small training set every optimiser step fits the few shapes of its batch and moves the
shared decoder away from the others, so the weights wander around the minimum rather than sit
in it. The running average `avg <- decay * avg + (1 - decay) * w` after every step sits nearer
the middle; it is the model a phase keeps (`TrainConfig.ema_decay`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """Averaged copies of named modules, updated after each optimiser step."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averages = {name: copy.deepcopy(m).requires_grad_(False) for name, m in modules.items()}

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            averaged = self.averages[name]
            for avg, w in zip(averaged.parameters(), module.parameters(), strict=True):
                avg.lerp_(w, 1.0 - self.decay)
            for avg, w in zip(averaged.buffers(), module.buffers(), strict=True):
                avg.copy_(w)  # buffers (none in our models today) follow the live module

    @torch.no_grad()
    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        """Overwrite the modules' own weights with the averages."""
        for name, module in modules.items():
            module.load_state_dict(self.averages[name].state_dict())

    @contextmanager
    def applied(self, modules: dict[str, nn.Module]) -> Iterator[None]:
        """Within the block the modules hold the averaged weights; their own return afterwards.

        Swapping in place keeps every closure over the modules (the phase's predictor) valid.
        """
        self._swap(modules)
        try:
            yield
        finally:
            self._swap(modules)

    @torch.no_grad()
    def _swap(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            for avg, w in zip(self.averages[name].state_dict().values(), module.state_dict().values(), strict=True):
                tmp = w.clone()
                w.copy_(avg)
                avg.copy_(tmp)
