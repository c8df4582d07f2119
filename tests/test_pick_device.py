"""pick_device: "auto" follows FLOWSDF_DEVICE when it is set; explicit names must exist."""

import pytest
import torch

from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError


def test_auto_follows_the_environment_variable(monkeypatch):
    monkeypatch.setenv("FLOWSDF_DEVICE", "cpu")
    assert pick_device("auto") == torch.device("cpu")
    # The variable is checked like an explicit name: a device that does not exist is one error.
    monkeypatch.setenv("FLOWSDF_DEVICE", "tpu-of-dreams")
    with pytest.raises(FlowSDFError, match="unknown device 'tpu-of-dreams'"):
        pick_device("auto")


def test_an_explicit_name_wins_over_the_environment_variable(monkeypatch):
    monkeypatch.setenv("FLOWSDF_DEVICE", "tpu-of-dreams")
    assert pick_device("cpu") == torch.device("cpu")


def test_auto_without_the_variable_is_cuda_exactly_when_present(monkeypatch):
    monkeypatch.delenv("FLOWSDF_DEVICE", raising=False)
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
