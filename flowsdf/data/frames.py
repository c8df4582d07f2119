"""Which 3-D frame a shape's code lives in: the dataset's world frame or the input view's frame.

The dataset turns every shape by a random rotation and also puts its cameras at random
azimuth / elevation, and the light is fixed relative to the camera. One picture therefore does
not reveal the shape's pose in the world frame: a camera at azimuth a and the shape, or a camera
at a' and the shape turned by a' - a about z, give the same picture. A world-frame model has to
guess the pose of a held-out picture, and a guess averaged over poses is a blob.

The "view" frame (viewer-centred, as in Tatarchenko et al. 2019, "What do single-view 3D
reconstruction networks learn?") removes that ambiguity: each shape and all its cameras are
re-expressed relative to the shape's first input view, so that view's camera is always the
canonical camera `C0`:

    T = C0 · inv(C_in)          a rotation about the origin (both cameras look at the origin
                                from the same distance)
    c2w' = T · c2w,  light' = R_T · light,  spec' = the spec turned by R_T

Images and masks do not change. The spec is turned too, so 3-D metrics compare the prediction
with the ground truth in the same frame. With one training view per shape, training always sees
the camera C0; at inference a user's picture is taken from C0 as well — no camera search.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowsdf.data.dataset import Dataset, ShapeSplit, Views
from flowsdf.data.shapes import Spec
from flowsdf.errors import FlowSDFError
from flowsdf.render import cameras

FRAMES = ("world", "view")


def canonical_c2w(distance: float) -> np.ndarray:
    """The view frame's input camera C0 (4, 4): on the +x axis at `distance`, level, world up +z.

    Level (elevation 0) so that turning about world z orbits around the picture's vertical axis.
    """
    return cameras.look_at(np.array([distance, 0.0, 0.0]))


def rotate_spec(spec: Spec, R: np.ndarray) -> Spec:
    """The shape `spec` turned by the rotation R (3, 3) about the origin: sdf'(R p) = sdf(p).

    A primitive evaluates R_p^T (p - t); turned, its rotation is R R_p and its translation R t.
    """
    if "op" in spec:
        return {"op": spec["op"], "a": rotate_spec(spec["a"], R), "b": rotate_spec(spec["b"], R)}
    rot = R @ np.asarray(spec["rotation"], dtype=np.float64)
    trans = R @ np.asarray(spec["translation"], dtype=np.float64)
    return {**spec, "rotation": rot.tolist(), "translation": trans.tolist()}


def view_rotations(input_c2w: Tensor, distance: float) -> Tensor:
    """T = C0 · inv(C_in) for each shape's first input camera: (N, V, 4, 4) -> (N, 4, 4)."""
    c_in = input_c2w[:, 0].double()  # (N, 4, 4)
    c0 = torch.from_numpy(canonical_c2w(distance)).to(c_in)  # (4, 4)
    T = c0 @ torch.linalg.inv(c_in)  # (N, 4, 4)
    # Both cameras look at the origin from the same distance, so T fixes the origin: a pure rotation.
    if T[:, :3, 3].abs().max() > 1e-4:
        raise FlowSDFError("view frame: input cameras must look at the origin from data.cam_distance")
    T[:, :3, 3] = 0.0
    return T


def _turn_views(views: Views, T: Tensor) -> Views:
    """Every camera and light of `views` (N, V, ...) turned by its shape's T (N, 4, 4)."""
    Tv = T[:, None].to(views.c2w.dtype)  # (N, 1, 4, 4)
    c2w = Tv @ views.c2w  # (N, V, 4, 4)
    light = (Tv[..., :3, :3] @ views.light[..., None]).squeeze(-1)  # (N, V, 3)
    return Views(views.images, views.masks, views.K, c2w, light)


def to_view_frame(split: ShapeSplit, distance: float) -> ShapeSplit:
    """A split re-expressed in each shape's input-view frame (see the module docstring)."""
    T = view_rotations(split.input.c2w, distance)  # (N, 4, 4)
    specs = [rotate_spec(s, T[i, :3, :3].numpy()) for i, s in enumerate(split.shapes)]
    return ShapeSplit(specs, split.albedo, _turn_views(split.input, T), _turn_views(split.novel, T))


def view_frame_problem(frame: str, train_views: int, all_views: bool) -> str | None:
    """Why a view-frame training setting will not learn depth, or None when it can.

    In the view frame, with one training view per shape every training picture and silhouette is
    seen from C0, so nothing constrains a shape along C0's axis: measured (quick resolution,
    README) held-out novel-view IoU 0.395 against 0.765 in the world frame. Several views per
    shape bring back the missing directions (measured with stage1.all_views: 0.690) — but only as
    `all_views` supervision: the frame is the shape's first view's, so a code predicted from
    another view's picture (one sample per view) would have to guess where that camera stands,
    the very ambiguity the view frame removes.
    """
    if frame != "view":
        return None
    if train_views < 2:
        return ("frame=view with one training view per shape leaves every shape unconstrained along the "
                "input camera's axis (measured: held-out novel-view IoU 0.395 vs 0.765 in the world frame); "
                "use data.train_views >= 2 with all_views=true, or frame=world")
    if not all_views:
        return ("frame=view with several views per shape needs all_views=true: the frame is each shape's "
                "first view's, and a code predicted from another view's picture cannot know where that camera stands")
    return None


def apply_frame(data: Dataset, frame: str) -> Dataset:
    """The dataset in `frame` ("world": unchanged; "view": every shape in its input view's frame)."""
    if frame not in FRAMES:
        raise FlowSDFError(f"unknown frame {frame!r}; choose one of: {', '.join(FRAMES)}")
    if frame == "world":
        return data
    d = data.config.cam_distance
    return Dataset(data.root, data.config, to_view_frame(data.train, d), to_view_frame(data.heldout, d))
