"""Stage 3 training: --rgb-weight 0 is silhouette-only exactly; RGB training, checkpoint, resume; bad input."""

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from flowsdf import checkpoint, runs
from flowsdf.build import build_stage1
from flowsdf.cli import main
from flowsdf.loading import load_albedo
from flowsdf.train.stage1 import train_stage1


def _weights(run, cfg):
    enc, dec = build_stage1(cfg)
    checkpoint.load(runs.checkpoint_path(run, "stage1"), {"encoder": enc, "decoder": dec})
    return [p.detach() for p in (*enc.parameters(), *dec.parameters())]


def test_rgb_weight_zero_reproduces_silhouette_only_training_exactly(tmp_path, tiny_cfg, tiny_data_dir):
    base = [sys.executable, "-m", "flowsdf", "train", "--stage", "cnn", "--preset", "tiny", "--epochs", "2",
            "--threads", "1", "--quiet", "--data", str(tiny_data_dir)]
    for name, extra in (("plain", []), ("zero", ["--rgb-weight", "0"])):
        subprocess.run([*base, "--out", str(tmp_path / name), *extra], check=True, capture_output=True)
    assert all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "plain", tiny_cfg), _weights(tmp_path / "zero", tiny_cfg)))
    with safe_open(str(runs.checkpoint_path(tmp_path / "zero", "stage1")), framework="pt") as f:
        assert not any(k.startswith("model.albedo.") for k in f.keys())  # no head, no shading: the same run
    losses = lambda run: [r["loss"] for r in runs.read_metrics(tmp_path / run, "stage1")]  # noqa: E731
    assert losses("plain") == losses("zero")


def test_rgb_training_checkpoints_the_albedo_head_draws_shading_and_resumes_exactly(tmp_path, tiny_cfg, tiny_data_dir):
    stage1 = dataclasses.replace(tiny_cfg.stage1, epochs=3, figure_every=100, rgb_weight=1.0)
    cfg = dataclasses.replace(tiny_cfg, stage1=stage1)
    train_stage1(cfg, tmp_path / "straight", tiny_data_dir, progress=False)
    assert train_stage1(cfg, tmp_path / "resumed", tiny_data_dir, progress=False, until_epoch=1) is None
    train_stage1(cfg, tmp_path / "resumed", tiny_data_dir, resume=True, progress=False)

    assert all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "straight", cfg), _weights(tmp_path / "resumed", cfg)))
    heads = [load_albedo(runs.checkpoint_path(tmp_path / r, "stage1"), cfg.decoder.mlp.latent_dim) for r in ("straight", "resumed")]
    assert heads[0] is not None
    assert all(torch.equal(a, b) for a, b in zip(heads[0].parameters(), heads[1].parameters()))
    rows = runs.read_metrics(tmp_path / "straight", "stage1")
    assert all({"bce", "rgb_l1", "rgb_pixels"} <= set(r) for r in rows)
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["bce"] + rows[-1]["rgb_l1"], rel=1e-6, abs=1e-9)
    assert (tmp_path / "straight" / "stage1" / "figures" / "shading_0003.png").stat().st_size > 1000
    assert runs.read_config(tmp_path / "straight").stage1.rgb_weight == 1.0


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf"])
def test_bad_rgb_weight_is_one_clear_line(tmp_path, capsys, value):
    assert main(["train", "--stage", "cnn", "--preset", "tiny", "--out", str(tmp_path / "r"), f"--rgb-weight={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowsdf: error: --rgb-weight must be a number >= 0")
    assert not (tmp_path / "r").exists()


def test_a_dataset_without_lights_is_refused_for_rgb_training(tmp_path, capsys, tiny_data_dir):
    data = tmp_path / "nolight"
    shutil.copytree(tiny_data_dir, data)
    with np.load(data / "train.npz") as f:
        arrays = dict(f)
    arrays["input_light"] = np.zeros_like(arrays["input_light"])
    np.savez_compressed(data / "train.npz", **arrays)
    args = ["train", "--stage", "cnn", "--preset", "tiny", "--epochs", "1", "--quiet", "--data", str(data),
            "--out", str(tmp_path / "r")]
    assert main([*args, "--rgb-weight", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "light direction" in err[0]
    assert not runs.checkpoint_path(tmp_path / "r", "stage1").exists()
    assert main([*args, "--rgb-weight", "0"]) == 0  # silhouettes alone need no light
