import dataclasses
import json

import pytest
import torch

from flowsdf import checkpoint, runs
from flowsdf.build import build_stage1
from flowsdf.config import TrainConfig
from flowsdf.errors import FlowSDFError
from flowsdf.train.loop import lr_at, tau_at, warmup_factor
from flowsdf.train.stage1 import train_stage1


def test_schedules_hit_their_endpoints():
    tc = TrainConfig(epochs=11, lr=1e-3, lr_final_fraction=0.1, tau_start=0.1, tau_end=0.01)
    assert tau_at(tc, 0) == pytest.approx(0.1) and tau_at(tc, 10) == pytest.approx(0.01)
    assert tau_at(tc, 5) == pytest.approx(0.1 * 0.1**0.5)  # geometric midpoint
    assert lr_at(tc, 0) == pytest.approx(1e-3) and lr_at(tc, 10) == pytest.approx(1e-4)


def test_warmup_ramps_linearly_to_one():
    assert [warmup_factor(TrainConfig(warmup_steps=0), s) for s in (0, 5)] == [1.0, 1.0]
    tc = TrainConfig(warmup_steps=4)
    assert [warmup_factor(tc, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_tiny_training_lowers_the_loss_and_writes_the_run(tmp_path, tiny_cfg, tiny_data_dir):
    cfg = dataclasses.replace(tiny_cfg, stage1=dataclasses.replace(tiny_cfg.stage1, epochs=3))
    summary = train_stage1(cfg, tmp_path / "run", tiny_data_dir, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["loss"] < rows[0]["loss"]  # same tau throughout (tiny preset)
    assert (tmp_path / "run" / "stage1" / "figures" / "epoch_0003.png").stat().st_size > 1000
    assert 0.0 <= summary["novel_views"]["iou"] <= 1.0
    assert len(summary["novel_views"]["per_shape_iou"]) == cfg.data.n_train_shapes
    assert (tmp_path / "run" / "config.json").exists()


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_cfg, tiny_data_dir):
    # The warm-up (4 steps per epoch here) runs across the interruption, so a resumed run must
    # pick up the step count where it stopped.
    stage1 = dataclasses.replace(tiny_cfg.stage1, epochs=4, figure_every=100, warmup_steps=12)
    four = dataclasses.replace(tiny_cfg, stage1=stage1)
    train_stage1(four, tmp_path / "straight", tiny_data_dir, progress=False)

    # The same 4-epoch run, stopped after epoch 2 (as if interrupted), then resumed.
    assert train_stage1(four, tmp_path / "resumed", tiny_data_dir, progress=False, until_epoch=2) is None
    assert runs.read_metrics(tmp_path / "resumed", "stage1")[-1]["epoch"] == 2
    train_stage1(four, tmp_path / "resumed", tiny_data_dir, resume=True, progress=False)

    enc_a, dec_a = build_stage1(four)
    enc_b, dec_b = build_stage1(four)
    checkpoint.load(runs.checkpoint_path(tmp_path / "straight", "stage1"), {"encoder": enc_a, "decoder": dec_a})
    meta = checkpoint.load(runs.checkpoint_path(tmp_path / "resumed", "stage1"), {"encoder": enc_b, "decoder": dec_b})
    assert meta["epoch"] == 4
    for a, b in zip([*enc_a.parameters(), *dec_a.parameters()], [*enc_b.parameters(), *dec_b.parameters()]):
        assert torch.equal(a, b)
    losses = lambda run: [r["loss"] for r in runs.read_metrics(tmp_path / run, "stage1")]  # noqa: E731
    assert losses("resumed") == losses("straight")


def test_a_finished_stage_is_never_overwritten(tmp_path, tiny_cfg, tiny_data_dir):
    cfg = dataclasses.replace(tiny_cfg, stage1=dataclasses.replace(tiny_cfg.stage1, epochs=1))
    train_stage1(cfg, tmp_path / "run", tiny_data_dir, progress=False)
    before = runs.checkpoint_path(tmp_path / "run", "stage1").read_bytes()
    with pytest.raises(FlowSDFError, match="already holds"):
        train_stage1(cfg, tmp_path / "run", tiny_data_dir, progress=False)
    assert runs.checkpoint_path(tmp_path / "run", "stage1").read_bytes() == before


def test_lr_scale_gives_each_module_its_share_of_the_lr(tmp_path, tiny_cfg, tiny_data_dir):
    stage1 = dataclasses.replace(tiny_cfg.stage1, epochs=1, lr_scale={"decoder": 0.0})
    train_stage1(dataclasses.replace(tiny_cfg, stage1=stage1), tmp_path / "run", tiny_data_dir, progress=False)
    enc0, dec0 = build_stage1(tiny_cfg)
    enc1, dec1 = build_stage1(tiny_cfg)
    checkpoint.load(runs.checkpoint_path(tmp_path / "run", "stage1"), {"encoder": enc1, "decoder": dec1})
    assert all(torch.equal(a, b) for a, b in zip(dec0.parameters(), dec1.parameters()))  # lr 0: untouched
    assert not all(torch.equal(a, b) for a, b in zip(enc0.parameters(), enc1.parameters()))


def test_lr_scale_rejects_a_module_the_phase_does_not_have(tmp_path, tiny_cfg, tiny_data_dir):
    stage1 = dataclasses.replace(tiny_cfg.stage1, epochs=1, lr_scale={"velocity": 0.1})
    with pytest.raises(FlowSDFError, match="velocity"):
        train_stage1(dataclasses.replace(tiny_cfg, stage1=stage1), tmp_path / "run", tiny_data_dir, progress=False)


def test_weight_average_is_what_the_stage_keeps_and_resumes_exactly(tmp_path, tiny_cfg, tiny_data_dir):
    def cfg_with(ema_decay):
        stage1 = dataclasses.replace(tiny_cfg.stage1, epochs=4, figure_every=100, ema_decay=ema_decay)
        return dataclasses.replace(tiny_cfg, stage1=stage1)

    def weights(run, prefix=""):
        enc, dec = build_stage1(tiny_cfg)
        checkpoint.load(runs.checkpoint_path(tmp_path / run, "stage1"), {f"{prefix}encoder": enc, f"{prefix}decoder": dec})
        return [p.detach() for p in (*enc.parameters(), *dec.parameters())]

    train_stage1(cfg_with(0.0), tmp_path / "plain", tiny_data_dir, progress=False)
    # A decay this close to 1 leaves the average at the initial weights.
    frozen = cfg_with(1.0 - 1e-9)
    train_stage1(frozen, tmp_path / "frozen", tiny_data_dir, progress=False)
    initial = [p.detach() for m in build_stage1(tiny_cfg) for p in m.parameters()]
    for a, b in zip(weights("frozen"), initial):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert not all(torch.equal(a, b) for a, b in zip(weights("plain"), initial))
    # Averaging never changes training: the live weights are those of the run without it.
    assert all(torch.equal(a, b) for a, b in zip(weights("frozen", "live_"), weights("plain")))

    decayed = cfg_with(0.5)
    train_stage1(decayed, tmp_path / "straight", tiny_data_dir, progress=False)
    assert train_stage1(decayed, tmp_path / "resumed", tiny_data_dir, progress=False, until_epoch=2) is None
    train_stage1(decayed, tmp_path / "resumed", tiny_data_dir, resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights("straight"), weights("resumed")))
    assert all(torch.equal(a, b) for a, b in zip(weights("straight", "live_"), weights("resumed", "live_")))
    assert not all(torch.equal(a, b) for a, b in zip(weights("straight"), weights("plain")))


def test_ema_decay_outside_zero_to_one_is_one_clear_error(tmp_path, tiny_cfg, tiny_data_dir):
    stage1 = dataclasses.replace(tiny_cfg.stage1, epochs=1, ema_decay=1.0)
    with pytest.raises(FlowSDFError, match="ema_decay"):
        train_stage1(dataclasses.replace(tiny_cfg, stage1=stage1), tmp_path / "run", tiny_data_dir, progress=False)
