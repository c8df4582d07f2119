"""Procedural shapes defined by analytic signed distance functions.

A shape is a plain JSON-serialisable dict (a "spec"), so the dataset manifest can store every
shape exactly and evaluation can rebuild its ground-truth SDF without any mesh on disk:

    {"kind": "torus", "params": {"major": 0.5, "minor": 0.15},
     "rotation": [[...3x3...]], "translation": [x, y, z]}
    {"op": "union" | "difference", "a": <spec>, "b": <spec>}

``sdf(spec, points)`` evaluates it. Primitive SDFs are exact (unit gradient) except the
ellipsoid and CSG results, which are the usual conservative bounds; the renderer only needs
the sign and a rough distance. Every shape is sampled so it lies inside the unit sphere.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

Spec = dict[str, Any]

# Shapes must fit in this radius so they sit strictly inside the unit bounding sphere.
MAX_RADIUS = 0.85


def _length(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v, dim=-1)


def sd_sphere(p: Tensor, radius: float) -> Tensor:
    return _length(p) - radius


def sd_box(p: Tensor, half: list[float]) -> Tensor:
    q = p.abs() - p.new_tensor(half)  # (P, 3)
    return _length(q.clamp(min=0)) + q.max(dim=-1).values.clamp(max=0)


def sd_rounded_box(p: Tensor, half: list[float], radius: float) -> Tensor:
    inner = [h - radius for h in half]
    return sd_box(p, inner) - radius


def sd_torus(p: Tensor, major: float, minor: float) -> Tensor:
    # Ring in the xz-plane around the y axis.
    q = torch.stack([_length(p[:, [0, 2]]) - major, p[:, 1]], dim=-1)  # (P, 2)
    return _length(q) - minor


def sd_cylinder(p: Tensor, radius: float, half_height: float) -> Tensor:
    # Capped cylinder along y.
    d = torch.stack([_length(p[:, [0, 2]]) - radius, p[:, 1].abs() - half_height], dim=-1)  # (P, 2)
    return _length(d.clamp(min=0)) + d.max(dim=-1).values.clamp(max=0)


def sd_cone(p: Tensor, radius: float, half_height: float) -> Tensor:
    """Exact capped cone along y: base of `radius` at y = -h, apex at y = +h."""
    h = half_height
    q = torch.stack([_length(p[:, [0, 2]]), p[:, 1]], dim=-1)  # (P, 2)
    k1 = q.new_tensor([0.0, h])  # apex side (top radius 0)
    k2 = q.new_tensor([-radius, 2.0 * h])
    top_or_bottom = torch.where(q[:, 1] < 0, q.new_tensor(radius), q.new_tensor(0.0))
    ca = torch.stack([q[:, 0] - torch.minimum(q[:, 0], top_or_bottom), q[:, 1].abs() - h], dim=-1)
    t = (((k1 - q) * k2).sum(-1) / (k2 * k2).sum()).clamp(0.0, 1.0)
    cb = q - k1 + k2 * t[:, None]  # (P, 2)
    inside = (cb[:, 0] < 0) & (ca[:, 1] < 0)
    sign = torch.where(inside, -1.0, 1.0).to(q.dtype)
    return sign * torch.sqrt(torch.minimum((ca * ca).sum(-1), (cb * cb).sum(-1)))


def sd_capsule(p: Tensor, half_length: float, radius: float) -> Tensor:
    # Segment along y from -half_length to +half_length.
    y = p[:, 1].clamp(-half_length, half_length)
    closest = torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)], dim=-1)  # (P, 3)
    return _length(p - closest) - radius


def sd_ellipsoid(p: Tensor, radii: list[float]) -> Tensor:
    # A common first-order bound: exact sign, distance accurate near the surface.
    r = p.new_tensor(radii)
    k0 = _length(p / r)
    k1 = _length(p / (r * r))
    return k0 * (k0 - 1.0) / k1.clamp(min=1e-9)


def sd_octahedron(p: Tensor, size: float) -> Tensor:
    """Exact octahedron |x|+|y|+|z| = size."""
    q = p.abs()  # (P, 3)
    m = q.sum(-1) - size
    # Pick the coordinate permutation that the nearest face region needs.
    cand = [q, q[:, [1, 2, 0]], q[:, [2, 0, 1]]]
    conds = [3.0 * q[:, 0] < m, 3.0 * q[:, 1] < m, 3.0 * q[:, 2] < m]
    r = cand[2]
    for c, qq in zip(reversed(conds[:2]), reversed(cand[:2])):
        r = torch.where(c[:, None], qq, r)
    any_region = conds[0] | conds[1] | conds[2]
    k = (0.5 * (r[:, 2] - r[:, 1] + size)).clamp(0.0, size)
    exact = _length(torch.stack([r[:, 0], r[:, 1] - size + k, r[:, 2] - k], dim=-1))
    return torch.where(any_region, exact, m * (1.0 / math.sqrt(3.0)))


PRIMITIVES: dict[str, Callable[..., Tensor]] = {
    "sphere": sd_sphere,
    "box": sd_box,
    "rounded_box": sd_rounded_box,
    "torus": sd_torus,
    "cylinder": sd_cylinder,
    "cone": sd_cone,
    "capsule": sd_capsule,
    "ellipsoid": sd_ellipsoid,
    "octahedron": sd_octahedron,
}


def sdf(spec: Spec, points: Tensor) -> Tensor:
    """Signed distance of `points` (P, 3) to the shape `spec`; returns (P,)."""
    if "op" in spec:
        a, b = sdf(spec["a"], points), sdf(spec["b"], points)
        if spec["op"] == "union":
            return torch.minimum(a, b)
        if spec["op"] == "difference":
            return torch.maximum(a, -b)
        raise ValueError(f"unknown CSG op {spec['op']!r}")
    rot = points.new_tensor(spec["rotation"])  # (3, 3) local -> world
    trans = points.new_tensor(spec["translation"])  # (3,)
    local = (points - trans) @ rot  # (P, 3) world -> local: R^T (p - t)
    return PRIMITIVES[spec["kind"]](local, **spec["params"])


def bounding_radius(spec: Spec) -> float:
    """Radius of a ball around the origin that contains the shape (conservative)."""
    if "op" in spec:
        if spec["op"] == "difference":
            return bounding_radius(spec["a"])
        return max(bounding_radius(spec["a"]), bounding_radius(spec["b"]))
    p = spec["params"]
    local = {
        "sphere": lambda: p["radius"],
        "box": lambda: math.hypot(*p["half"]),
        "rounded_box": lambda: math.hypot(*p["half"]),
        "torus": lambda: p["major"] + p["minor"],
        "cylinder": lambda: math.hypot(p["radius"], p["half_height"]),
        "cone": lambda: math.hypot(p["radius"], p["half_height"]),
        "capsule": lambda: p["half_length"] + p["radius"],
        "ellipsoid": lambda: max(p["radii"]),
        "octahedron": lambda: p["size"],
    }[spec["kind"]]()
    return local + float(np.linalg.norm(spec["translation"]))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _random_params(kind: str, rng: np.random.Generator, scale: float) -> dict[str, Any]:
    u = lambda lo, hi: float(rng.uniform(lo, hi)) * scale  # noqa: E731
    if kind == "sphere":
        return {"radius": u(0.35, 0.6)}
    if kind == "box":
        return {"half": [u(0.2, 0.45), u(0.2, 0.45), u(0.2, 0.45)]}
    if kind == "rounded_box":
        half = [u(0.25, 0.45), u(0.25, 0.45), u(0.25, 0.45)]
        return {"half": half, "radius": float(rng.uniform(0.2, 0.5)) * min(half)}
    if kind == "torus":
        major = u(0.35, 0.55)
        return {"major": major, "minor": major * float(rng.uniform(0.25, 0.45))}
    if kind == "cylinder":
        return {"radius": u(0.2, 0.45), "half_height": u(0.25, 0.55)}
    if kind == "cone":
        return {"radius": u(0.3, 0.5), "half_height": u(0.3, 0.55)}
    if kind == "capsule":
        return {"half_length": u(0.15, 0.4), "radius": u(0.15, 0.3)}
    if kind == "ellipsoid":
        return {"radii": [u(0.2, 0.6), u(0.2, 0.6), u(0.2, 0.6)]}
    if kind == "octahedron":
        return {"size": u(0.45, 0.7)}
    raise ValueError(f"unknown primitive {kind!r}")


def random_primitive(rng: np.random.Generator, scale: float = 1.0, offset: float = 0.0) -> Spec:
    kind = str(rng.choice(sorted(PRIMITIVES)))
    translation = rng.normal(size=3)
    translation = translation / np.linalg.norm(translation) * offset
    return {
        "kind": kind,
        "params": _random_params(kind, rng, scale),
        "rotation": random_rotation(rng).tolist(),
        "translation": translation.tolist(),
    }


def fit_in_sphere(spec: Spec, max_radius: float = MAX_RADIUS) -> Spec:
    """Uniformly rescale a spec so its bounding radius is at most `max_radius`."""
    r = bounding_radius(spec)
    if r <= max_radius:
        return spec
    return _scaled(spec, max_radius / r)


def _scaled(spec: Spec, s: float) -> Spec:
    if "op" in spec:
        return {"op": spec["op"], "a": _scaled(spec["a"], s), "b": _scaled(spec["b"], s)}
    params = {
        k: ([x * s for x in v] if isinstance(v, list) else v * s) for k, v in spec["params"].items()
    }
    return {**spec, "params": params, "translation": [t * s for t in spec["translation"]]}


def random_shape(rng: np.random.Generator, csg_fraction: float = 0.25) -> Spec:
    """One random shape: usually a primitive, sometimes a union or difference of two."""
    if rng.uniform() >= csg_fraction:
        return fit_in_sphere(random_primitive(rng))
    op = "union" if rng.uniform() < 0.6 else "difference"
    a = random_primitive(rng, scale=0.9)
    # The second operand is smaller and pushed off-centre so the result differs from `a`.
    b = random_primitive(rng, scale=0.6, offset=float(rng.uniform(0.2, 0.4)))
    return fit_in_sphere({"op": op, "a": a, "b": b})


def random_shapes(n: int, seed: int, csg_fraction: float = 0.25) -> list[Spec]:
    """`n` shapes, deterministic from `seed` (NumPy's PCG64, identical on every platform)."""
    rng = np.random.default_rng(seed)
    return [random_shape(rng, csg_fraction) for _ in range(n)]


def family(spec: Spec) -> str:
    """A short human-readable name: 'torus' or 'union(box,cone)'."""
    if "op" in spec:
        return f"{spec['op']}({family(spec['a'])},{family(spec['b'])})"
    return spec["kind"]
