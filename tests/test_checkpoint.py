import pytest
import torch

from flowsdf import checkpoint
from flowsdf.errors import FlowSDFError


def test_round_trip_of_weights_optimiser_and_meta(tmp_path):
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(a.parameters(), lr=1e-2)
    a(torch.randn(5, 4)).sum().backward()
    opt.step()
    checkpoint.save(tmp_path / "c.safetensors", {"lin": a}, opt, {"epoch": 7, "sigma": 0.25})

    b = torch.nn.Linear(4, 3)
    opt_b = torch.optim.Adam(b.parameters(), lr=1.0)
    meta = checkpoint.load(tmp_path / "c.safetensors", {"lin": b}, opt_b)
    assert meta == {"epoch": 7, "sigma": 0.25}
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert opt_b.param_groups[0]["lr"] == 1e-2
    sa, sb = opt.state_dict()["state"], opt_b.state_dict()["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k]))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary files left


def test_corrupt_or_mismatched_checkpoints_fail_clearly(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(FlowSDFError, match="damaged"):
        checkpoint.load(bad, {"lin": torch.nn.Linear(4, 3)})
    with pytest.raises(FlowSDFError, match="does not exist"):
        checkpoint.load(tmp_path / "none.safetensors", {})
    checkpoint.save(tmp_path / "c.safetensors", {"lin": torch.nn.Linear(4, 3)})
    with pytest.raises(FlowSDFError, match="does not fit"):
        checkpoint.load(tmp_path / "c.safetensors", {"lin": torch.nn.Linear(5, 3)})
