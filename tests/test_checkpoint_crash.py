"""A crash in the middle of saving leaves the previous checkpoint byte for byte."""

import os

import pytest
import torch
from torch import nn

from flowsdf import checkpoint
from flowsdf.errors import FlowSDFError


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def _half_then_crash(tensors, filename, metadata=None):
    """A writer that gets halfway through the file and dies (disk full, kill, power cut)."""
    from safetensors.torch import save as to_bytes

    data = to_bytes(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["writer", "rename"])
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "stage1" / "last.safetensors"
    checkpoint.save(path, {"model": _model(0)}, meta={"epoch": 1})
    before = path.read_bytes()
    if where == "writer":
        monkeypatch.setattr(checkpoint, "save_file", _half_then_crash)
    else:  # the file is complete but the process dies before the rename
        def no_rename(src, dst):
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(checkpoint.os, "replace", no_rename)
    with pytest.raises(FlowSDFError, match="cannot write checkpoint .*last.safetensors"):
        checkpoint.save(path, {"model": _model(1)}, meta={"epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["last.safetensors"]  # no temporary file left behind
    monkeypatch.undo()
    loaded = _model(2)
    assert checkpoint.load(path, {"model": loaded})["epoch"] == 1
    for a, b in zip(loaded.parameters(), _model(0).parameters(), strict=True):
        assert torch.equal(a, b)


def test_crash_mid_text_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    checkpoint.atomic_write_text(path, '{"epoch": 1}\n')
    before = path.read_bytes()

    def no_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "replace", no_rename)
    with pytest.raises(FlowSDFError, match="cannot write .*summary.json"):
        checkpoint.atomic_write_text(path, '{"epoch": 2}\n' * 1000)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["summary.json"]
