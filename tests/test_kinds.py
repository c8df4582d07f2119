"""Every configuration kind trains a tiny run end to end and reloads through FlowSDF.from_run.

decoder.kind (mlp | triplane, with the encoder that makes its code), velocity.kind (mlp | dit),
conditioner.kind (cnn | vit | dinov2 from a tiny random local file): the same training, loading
and sampling code serves each, with no special case at the call sites.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flowsdf import config as config_mod
from flowsdf import overrides
from flowsdf.build import build_flow, build_stage1
from flowsdf.pipeline import FlowSDF
from flowsdf.train.flow import train_flow
from flowsdf.train.stage1 import train_stage1

SMALL_TRIPLANE = ["decoder.kind=triplane", "decoder.triplane.latent_channels=4", "decoder.triplane.latent_resolution=8",
                  "decoder.triplane.channels=8", "decoder.triplane.resolution=16", "encoder.triplane.channels=[8, 16, 16]"]
SMALL_DIT = ["velocity.kind=dit", "velocity.dit.hidden=32", "velocity.dit.heads=2", "velocity.dit.depth=2"]
SHORT = ["stage1.epochs=1", "phase1.iterations=5", "phase2.epochs=1"]


def tiny(items: list[str]) -> config_mod.Config:
    return overrides.apply(config_mod.preset("tiny"), SHORT + items)


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory, tiny_data_dir):
    """One finished tiny Stage 1 per decoder kind."""
    root = tmp_path_factory.mktemp("kinds")
    runs = {}
    for name, items in (("mlp", []), ("triplane", SMALL_TRIPLANE)):
        train_stage1(tiny(items), root / name, tiny_data_dir, progress=False)
        runs[name] = (root / name, items)
    return runs


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory):
    """A tiny random DINOv2 (width 32, 2 layers) saved as a Hugging Face folder."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=28))
    path = tmp_path_factory.mktemp("dinov2") / "tiny"
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("decoder, items", [
    ("mlp", SMALL_DIT),  # the DiT on the seed's code with the seed's one-token CNN condition
    ("triplane", SMALL_DIT + ["conditioner.kind=vit", "conditioner.vit.patch_size=4", "conditioner.vit.hidden=32",
                              "conditioner.vit.heads=2", "conditioner.vit.depth=1"]),  # tokens on both sides
    ("triplane", []),  # the MLP velocity net reads a triplane code as one vector
])
def test_each_kind_trains_end_to_end_and_reloads(tmp_path, tiny_data_dir, stage1_runs, decoder, items):
    import shutil

    init, s1_items = stage1_runs[decoder]
    run = tmp_path / "run"
    shutil.copytree(init, run)
    cfg = tiny(s1_items + items)
    summary = train_flow(cfg, run, run, tiny_data_dir, progress=False)
    assert summary["train_views"]["views"] > 0
    pipe = FlowSDF.from_run(run, "flow", "cpu")
    conditioner, velocity = build_flow(cfg)
    assert type(pipe.conditioner) is type(conditioner) and type(pipe.velocity) is type(velocity)
    assert type(pipe.decoder) is type(build_stage1(cfg)[1])
    images = torch.rand(2, 3, 16, 16)
    codes = pipe(images, samples=2, seed=3).codes  # (2, 2, *latent)
    assert codes.shape == (2, 2, *cfg.decoder.latent_shape)
    assert not torch.equal(codes[:, 0], codes[:, 1])  # two seeds, two samples
    torch.testing.assert_close(pipe(images, samples=2, seed=3).codes, codes)  # the same seeds again
    assert pipe.silhouettes(codes[:, 0], *[x.expand(2, *x.shape) for x in pipe.camera()]).shape == (2, 16, 16)
    assert pipe.mesh(codes[0, 0], resolution=16)[0].ndim == 2


def test_the_dinov2_conditioner_trains_a_flow_from_a_local_file(tmp_path, tiny_data_dir, stage1_runs, dinov2_file):
    import shutil

    init, _ = stage1_runs["mlp"]
    run = tmp_path / "run"
    shutil.copytree(init, run)
    items = ["conditioner.kind=dinov2", f"conditioner.weights={dinov2_file}", "conditioner.dinov2.hidden_size=32",
             "conditioner.dinov2.num_layers=2", "conditioner.dinov2.num_heads=2", "conditioner.dinov2.input_size=28"]
    cfg = tiny(items)
    before = {k: v.clone() for k, v in build_flow(cfg)[0].state_dict().items()}
    train_flow(cfg, run, run, tiny_data_dir, progress=False)
    pipe = FlowSDF.from_run(run, "flow", "cpu")
    assert pipe.conditioner(torch.rand(1, 3, 16, 16)).shape == (1, 1 + 2 * 2, 32)  # CLS + 2x2 patches of 14 px
    after = pipe.conditioner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen: training left it as loaded


def test_a_dinov2_conditioner_without_weights_is_refused_before_anything_is_built():
    from flowsdf.errors import FlowSDFError

    with pytest.raises(FlowSDFError, match="conditioner.weights"):
        overrides.apply(config_mod.preset("tiny"), ["conditioner.kind=dinov2"])


def test_kind_sections_are_independent_of_each_other():
    """Switching one part's kind changes only that part's modules."""
    base = config_mod.preset("tiny")
    dit = dataclasses.replace(base, velocity=dataclasses.replace(base.velocity, kind="dit"))
    assert type(build_flow(base)[0]) is type(build_flow(dit)[0])
    assert type(build_flow(base)[1]).__name__ == "VelocityNet" and type(build_flow(dit)[1]).__name__ == "DiTVelocity"
    assert [type(m) for m in build_stage1(base)] == [type(m) for m in build_stage1(dit)]
