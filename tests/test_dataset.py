import json

import numpy as np
import pytest

from flowsdf.data import dataset
from flowsdf.errors import FlowSDFError


def test_generation_is_deterministic_by_seed(tmp_path, tiny_cfg, tiny_data_dir):
    dataset.generate(tiny_cfg.data, tmp_path / "again")
    for split in dataset.SPLITS:
        with np.load(tiny_data_dir / f"{split}.npz") as a, np.load(tmp_path / "again" / f"{split}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                assert np.array_equal(a[k], b[k]), k
    other = dataclass_replace(tiny_cfg.data, seed=tiny_cfg.data.seed + 1)
    dataset.generate(other, tmp_path / "other")
    with np.load(tiny_data_dir / "train.npz") as a, np.load(tmp_path / "other" / "train.npz") as b:
        assert not np.array_equal(a["input_masks"], b["input_masks"])


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_layout_shapes_and_splits(tiny_cfg, tiny_data_dir):
    c = tiny_cfg.data
    d = dataset.load(tiny_data_dir)
    n, v, m, s = c.n_train_shapes, c.train_views, c.novel_views, c.image_size
    assert d.train.input.images.shape == (n, v, 3, s, s)
    assert d.train.novel.masks.shape == (n, m, s, s)
    assert d.heldout.input.images.shape[0] == c.n_heldout_shapes
    manifest = json.loads((tiny_data_dir / "manifest.json").read_text())
    assert manifest["config_hash"] == c.hash()
    # held-out shapes are not training shapes
    assert not any(h in manifest["splits"]["train"]["shapes"] for h in manifest["splits"]["heldout"]["shapes"])
    # background pixels are black, every view shows something
    bg = d.train.input.masks == 0  # (N, V, H, W)
    assert d.train.input.images.permute(0, 1, 3, 4, 2)[bg].abs().max() == 0
    assert (d.train.novel.masks.sum(dim=(-1, -2)) > 0).all()


def test_ensure_reuses_a_current_dataset_and_regenerates_on_config_change(tmp_path, tiny_cfg):
    root = tmp_path / "cache"
    dataset.ensure(tiny_cfg.data, root)
    stamp = (root / "train.npz").stat().st_mtime_ns
    dataset.ensure(tiny_cfg.data, root)
    assert (root / "train.npz").stat().st_mtime_ns == stamp
    changed = dataclass_replace(tiny_cfg.data, novel_views=1)
    d = dataset.ensure(changed, root)
    assert d.train.novel.masks.shape[1] == 1


def test_missing_and_corrupt_datasets_fail_with_one_clear_error(tmp_path, tiny_data_dir):
    with pytest.raises(FlowSDFError, match="no dataset"):
        dataset.load(tmp_path / "nothing")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data_dir, bad)
    (bad / "train.npz").write_bytes(b"not a zip file")
    with pytest.raises(FlowSDFError, match="damaged"):
        dataset.load(bad)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "keep.txt").write_text("mine")
    with pytest.raises(FlowSDFError, match="refusing to overwrite"):
        dataset.ensure(dataset.DataConfig(), tmp_path / "junk")
    assert (tmp_path / "junk" / "keep.txt").read_text() == "mine"


def test_workers_render_the_same_files(tmp_path, tiny_cfg, tiny_data_dir):
    dataset.generate(tiny_cfg.data, tmp_path / "parallel", progress=False, workers=2)
    for split in dataset.SPLITS:
        with np.load(tiny_data_dir / f"{split}.npz") as a, np.load(tmp_path / "parallel" / f"{split}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                assert np.array_equal(a[k], b[k]), k
    with pytest.raises(FlowSDFError, match="workers"):
        dataset.generate(tiny_cfg.data, tmp_path / "none", workers=0)


def test_stored_cameras_follow_the_renderers_convention(tiny_cfg, tiny_data_dir):
    """What training relies on: the ray of pixel (u, v) through the stored K and c2w
    (cameras.camera_rays) meets the exact shape exactly where the stored mask is 1; every camera
    sits at cam_distance and looks at the origin (its centre pixel's ray passes within a pixel)."""
    import torch

    from flowsdf.data import shapes
    from flowsdf.render import cameras

    d, size = dataset.load(tiny_data_dir), tiny_cfg.data.image_size
    for split in (d.train, d.heldout):
        for views in (split.input, split.novel):
            for i, spec in enumerate(split.shapes):
                o, dirs = cameras.camera_rays(views.K[i], views.c2w[i], size)  # (V, R, 3)
                assert torch.allclose(o.norm(dim=-1), torch.full(o.shape[:2], tiny_cfg.data.cam_distance), atol=1e-4)
                t = torch.linspace(0.0, 2 * tiny_cfg.data.cam_distance, 512)  # (S,) dense, past the origin
                points = o[..., None, :] + t[:, None] * dirs[..., None, :]  # (V, R, S, 3)
                inside = (shapes.sdf(spec, points.reshape(-1, 3)).view(*points.shape[:3]) < 0).any(-1)  # (V, R)
                agree = (inside == (views.masks[i].flatten(1) > 0.5)).float().mean().item()
                assert agree >= 0.99, (i, agree)  # all but grazing edge pixels
                centre = o + ((o * dirs).sum(-1, keepdim=True).neg()) * dirs  # closest point to the origin
                pixel = tiny_cfg.data.cam_distance * 2 * np.tan(np.radians(tiny_cfg.data.fov_deg) / 2) / size
                assert centre.norm(dim=-1).min(dim=1).values.max() <= pixel
