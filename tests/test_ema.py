import pytest
import torch
from torch import nn

from flowsdf.train.ema import WeightAverage


def _pair():
    torch.manual_seed(0)
    return {"a": nn.Linear(3, 2), "b": nn.Linear(2, 1)}


def test_update_is_the_exponential_average():
    modules = _pair()
    start = {n: [p.detach().clone() for p in m.parameters()] for n, m in modules.items()}
    ema = WeightAverage(modules, decay=0.9)
    with torch.no_grad():
        for m in modules.values():
            for p in m.parameters():
                p.add_(1.0)
    ema.update(modules)
    for name, m in ema.averages.items():
        for avg, w0 in zip(m.parameters(), start[name]):
            torch.testing.assert_close(avg, 0.9 * w0 + 0.1 * (w0 + 1.0))


def test_applied_swaps_the_average_in_and_restores_the_live_weights():
    modules = _pair()
    ema = WeightAverage(modules, decay=0.5)
    with torch.no_grad():
        for p in modules["a"].parameters():
            p.mul_(3.0)
    live = [p.detach().clone() for p in modules["a"].parameters()]
    with ema.applied(modules):
        for p, avg in zip(modules["a"].parameters(), ema.averages["a"].parameters()):
            assert not torch.equal(p, avg)  # the swap put the old weights here and the live ones there
        inside = [p.detach().clone() for p in modules["a"].parameters()]
    assert all(torch.equal(p, w) for p, w in zip(modules["a"].parameters(), live))
    for w, i in zip(live, inside):
        torch.testing.assert_close(i, w / 3.0)


def test_decay_must_be_a_fraction():
    with pytest.raises(ValueError):
        WeightAverage(_pair(), decay=1.0)
