"""The view frame: every shape and its cameras re-expressed relative to the shape's input view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowsdf.data import dataset, frames, shapes
from flowsdf.errors import FlowSDFError


@pytest.fixture(scope="module")
def data(tiny_data_dir):
    return dataset.load(tiny_data_dir)


def test_input_camera_becomes_the_canonical_camera(data):
    view = frames.apply_frame(data, "view")
    c0 = torch.from_numpy(frames.canonical_c2w(data.config.cam_distance)).float()
    for split in (view.train, view.heldout):
        assert torch.allclose(split.input.c2w[:, 0], c0.expand_as(split.input.c2w[:, 0]), atol=1e-5)


def test_turned_shapes_seen_from_turned_cameras_render_the_same_pictures(data):
    """The re-expressed scene is the same scene: re-rendering it gives the stored masks and images."""
    view = frames.apply_frame(data, "view")
    split, orig = view.train, data.train
    for i in range(2):
        for group in ("input", "novel"):
            v = getattr(split, group)
            img, mask, light = dataset._render_view(split.shapes[i], split.albedo[i].double().numpy(),
                                                    v.K[i, 0].double().numpy(), v.c2w[i, 0].double().numpy(), data.config)
            assert np.array_equal(mask, v.masks[i, 0].numpy().astype(np.uint8))
            assert np.allclose(light, v.light[i, 0].numpy(), atol=1e-5)
            assert np.abs(img / 255.0 - v.images[i, 0].permute(1, 2, 0).numpy()).max() <= 1.5 / 255
            # ... and the pictures themselves did not change.
            assert torch.equal(v.images[i], getattr(orig, group).images[i])


def test_rotate_spec_turns_the_sdf(data):
    g = torch.Generator().manual_seed(0)
    R = shapes.random_rotation(np.random.default_rng(3))
    p = torch.rand(500, 3, generator=g, dtype=torch.float64) * 2 - 1  # (P, 3)
    for spec in data.train.shapes + data.heldout.shapes:
        turned = frames.rotate_spec(spec, R)
        expected = shapes.sdf(spec, p)
        got = shapes.sdf(turned, p @ torch.from_numpy(R).T)  # sdf'(R p) = sdf(p)
        assert torch.allclose(got, expected, atol=1e-9)


def test_world_frame_leaves_data_alone_and_unknown_frames_fail(data):
    assert frames.apply_frame(data, "world") is data
    with pytest.raises(FlowSDFError, match="unknown frame"):
        frames.apply_frame(data, "object")


def test_view_frame_problem_names_the_settings_that_cannot_learn_depth():
    from flowsdf.data.frames import view_frame_problem

    assert view_frame_problem("world", 1, False) is None
    assert view_frame_problem("view", 3, True) is None
    problem = view_frame_problem("view", 1, True)  # C0 is the only camera training ever sees
    assert problem is not None and "data.train_views >= 2" in problem
    problem = view_frame_problem("view", 3, False)  # samples from the other views' pictures
    assert problem is not None and "all_views=true" in problem


def test_the_views_preset_is_a_view_frame_setting_that_learns_depth():
    from flowsdf import config as config_mod
    from flowsdf.data.frames import view_frame_problem

    cfg = config_mod.preset("views")
    assert cfg.frame == "view" and cfg.data.train_views >= 2
    for phase in (cfg.stage1, cfg.phase2):
        assert view_frame_problem(cfg.frame, cfg.data.train_views, phase.all_views) is None
