"""A table of per-shape codes fitted to all of a shape's views: the auto-decoder teacher.

DeepSDF learns one code per training shape jointly with the decoder ("auto-decoding"). Here the
codes are fitted through the renderer to every supervising view of their shape, so each code
explains all the views, where an image encoder sees only one picture. The codes are the latent
dataset a generative flow learns from: conditioned on one picture, it learns the distribution of
the codes of the shapes that picture could be (flowsdf.flow; the generative recipe).

The table stands where an encoder stands (Stage 1 calls it with pictures), so it is addressed by
the picture: each training shape's input picture is registered with its row (a digest of its
bytes), and a call with a batch of registered pictures returns their codes. A picture it was not
fitted to has no code: one clear error (a table does not generalise; the flow does).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from flowsdf.errors import FlowSDFError


def picture_keys(images: Tensor) -> Tensor:
    """A 63-bit digest of each picture's 8-bit pixels: (B, 3, H, W) in [0, 1] -> (B,) int64."""
    pixels = (images.detach() * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()  # (B, 3, H, W)
    keys = [int.from_bytes(hashlib.blake2b(p.numpy().tobytes(), digest_size=8).digest(), "little") >> 1
            for p in pixels]
    return torch.tensor(keys, dtype=torch.int64)


class CodeTable(nn.Module):
    """(B, 3, H, W) registered pictures -> their shapes' codes (B, *latent_shape)."""

    def __init__(self, n_shapes: int, latent_shape: tuple[int, ...], init_std: float = 0.01):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        self.codes = nn.Parameter(init_std * torch.randn(n_shapes, *self.latent_shape))  # (N, *latent)
        self.register_buffer("keys", torch.zeros(n_shapes, dtype=torch.int64))  # (N,) saved with the codes
        self._rows: dict[int, int] | None = None

    def register(self, pictures: Tensor) -> None:
        """Row i's picture is pictures[i] (N, 3, H, W): the training shapes' input pictures, in order."""
        if pictures.shape[0] != self.codes.shape[0]:
            raise FlowSDFError(f"a code table of {self.codes.shape[0]} shapes cannot take {pictures.shape[0]} pictures")
        keys = picture_keys(pictures)
        if len(set(keys.tolist())) != len(keys):
            raise FlowSDFError("two training shapes have the same input picture: a code table cannot tell them apart")
        self.keys.copy_(keys.to(self.keys.device))
        self._rows = None

    def rows(self, images: Tensor) -> Tensor:
        """The table rows (B,) of registered pictures (B, 3, H, W)."""
        if self._rows is None:
            self._rows = {int(k): i for i, k in enumerate(self.keys.tolist())}
        try:
            return torch.tensor([self._rows[int(k)] for k in picture_keys(images)], device=self.codes.device)
        except KeyError:
            raise FlowSDFError("a code table only has codes for the training pictures it was fitted to; "
                               "sample this picture's code with the run's flow") from None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._rows = None  # new keys: rebuild the lookup

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) of training shapes -> codes (B, *latent_shape)."""
        return self.codes.index_select(0, self.rows(images))  # (B, *latent)
