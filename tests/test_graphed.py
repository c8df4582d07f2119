"""The captured training step (train/graphed.py) against the reference step of train/loop.py: the
same loss, gradient and update with the shape-static search; the same run with and without it."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from flowsdf.build import build_stage1
from flowsdf.config import from_dict, to_dict
from flowsdf.data import dataset
from flowsdf.errors import FlowSDFError
from flowsdf.runs import read_metrics
from flowsdf.train.graphed import GraphedStep
from flowsdf.train.loop import Phase, SilhouetteObjective, flatten_views, index_views
from flowsdf.train.stage1 import train_stage1

TAU = 0.05


def _with_render(cfg, **changes):
    return dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, **changes))


def _objective_and_optimizer(cfg):
    torch.manual_seed(0)
    encoder, decoder = build_stage1(cfg)
    modules = {"encoder": encoder, "decoder": decoder}
    phase = Phase("stage1", modules, lambda images, gen: encoder(images), decoder, cfg.stage1)
    params = [p for m in modules.values() for p in m.parameters()]
    groups = [{"params": list(m.parameters()), "name": n} for n, m in modules.items()]
    return SilhouetteObjective(phase, cfg), params, torch.optim.Adam(groups, lr=1e-3)


def test_captured_step_equals_the_reference_step(tiny_cfg, tiny_data_dir):
    """One step of the graphed path (static search; on a CPU it runs eagerly) against the loop's
    reference step (exhaustive search): loss, every gradient, every weight after Adam."""
    views = flatten_views(dataset.load(tiny_data_dir).train.input)
    batch = index_views(views, torch.arange(4))
    objective, params, optimizer = _objective_and_optimizer(_with_render(tiny_cfg, search="exhaustive"))
    loss = objective(batch, None, TAU, slice(0, 4))[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    grads = [p.grad.clone() for p in params]
    optimizer.step()

    objective_s, params_s, optimizer_s = _objective_and_optimizer(_with_render(tiny_cfg, search="static"))
    step = GraphedStep(lambda v, t: objective_s(v, None, t, slice(0, 4))[0], params_s, optimizer_s, 1.0, batch)
    loss_s, norm_s = step.step(batch, TAU, [1e-3, 1e-3])
    assert abs(loss_s.item() - loss.item()) <= 1e-6 * loss.item()
    assert abs(norm_s.item() - norm.item()) <= 1e-5 * norm.item() and norm.item() > 0
    for g, p in zip(grads, params_s, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)
    for p, q in zip(params, params_s, strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)  # Adam's first move is ~lr = 1e-3 per weight


def test_a_run_with_the_captured_step_is_the_run_without_it(tmp_path, tiny_cfg, tiny_data_dir):
    """stage1.graph changes how a step is launched, not what it computes: on a CPU the run is the
    same run, bit for bit, including a last, smaller batch that runs outside the graph."""
    stage1 = dataclasses.replace(tiny_cfg.stage1, epochs=2, batch_size=3, figure_every=100)
    base = dataclasses.replace(_with_render(tiny_cfg, search="static"), stage1=stage1)
    graphed = dataclasses.replace(base, stage1=dataclasses.replace(stage1, graph=True))
    for name, cfg in (("plain", base), ("graphed", graphed)):
        train_stage1(cfg, tmp_path / name, tiny_data_dir, progress=False)
    plain, captured = (load_file(tmp_path / n / "stage1" / "last.safetensors") for n in ("plain", "graphed"))
    assert plain.keys() == captured.keys() and any(k.startswith("optim.") for k in plain)
    for key in plain:
        assert torch.equal(plain[key], captured[key]), key
    losses = [[r["loss"] for r in read_metrics(tmp_path / n, "stage1")] for n in ("plain", "graphed")]
    assert losses[0] == losses[1] and len(losses[0]) == 2


@pytest.mark.parametrize("change, words", [
    ({"render.search": "coarse"}, "render.search=static"),
    ({"render.search": "static", "stage1.rgb_weight": 1.0}, "silhouette step only"),
    ({"render.search": "static", "phase2.graph": True}, "phase2.graph is not supported"),
])
def test_a_step_that_cannot_be_captured_is_refused_with_the_reason(tiny_cfg, change, words):
    cfg = dataclasses.replace(tiny_cfg, stage1=dataclasses.replace(tiny_cfg.stage1, graph=True))
    for path, value in change.items():  # replace, never setattr: the sections are the shared fixture's
        section, key = path.split(".")
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: value})})
    with pytest.raises(FlowSDFError, match=words):
        from_dict(to_dict(cfg))
