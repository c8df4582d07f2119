"""Pinhole cameras on a sphere around the origin, and the rays they shoot.

Convention (OpenCV): camera x right, y down, z forward; `c2w` maps camera to world
coordinates; pixel (i, j) = (row, column) shoots its ray through the pixel centre.
World up is +z. All cameras look at the origin from `distance`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def intrinsics(image_size: int, fov_deg: float) -> np.ndarray:
    """3x3 pinhole matrix for a square image with the given full field of view."""
    focal = 0.5 * image_size / math.tan(math.radians(fov_deg) / 2.0)
    c = image_size / 2.0
    return np.array([[focal, 0.0, c], [0.0, focal, c], [0.0, 0.0, 1.0]])


def look_at(position: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world matrix of a camera at `position` looking at the origin."""
    forward = -position / np.linalg.norm(position)
    up = np.array([0.0, 0.0, 1.0])
    if abs(forward @ up) > 0.999:  # looking straight up or down: any other up will do
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w


def random_viewpoints(
    rng: np.random.Generator, n: int, distance: float, min_elev_deg: float = -20.0, max_elev_deg: float = 60.0
) -> np.ndarray:
    """`n` camera positions (n, 3) at `distance`, uniform in azimuth and in sin(elevation)."""
    azim = rng.uniform(0.0, 2.0 * math.pi, size=n)
    lo, hi = math.sin(math.radians(min_elev_deg)), math.sin(math.radians(max_elev_deg))
    elev = np.arcsin(rng.uniform(lo, hi, size=n))
    return distance * np.stack(
        [np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)], axis=-1
    )


def camera_rays(K: Tensor, c2w: Tensor, image_size: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions for every pixel, row-major.

    K (..., 3, 3), c2w (..., 4, 4) -> origins (..., H*W, 3), directions (..., H*W, 3).
    """
    idx = torch.arange(image_size, dtype=K.dtype, device=K.device) + 0.5  # pixel centres
    v, u = torch.meshgrid(idx, idx, indexing="ij")  # (H, W) rows, columns
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]  # (..., 1)
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    x = (u.reshape(-1) - cx) / fx  # (..., H*W)
    y = (v.reshape(-1) - cy) / fy
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (..., H*W, 3)
    d_world = d_cam @ c2w[..., :3, :3].transpose(-1, -2)  # (..., H*W, 3)
    d_world = d_world / torch.linalg.vector_norm(d_world, dim=-1, keepdim=True)
    origins = c2w[..., None, :3, 3].expand_as(d_world)  # (..., H*W, 3)
    return origins, d_world
