"""The latency benchmark's plumbing (keys, units, device name) with tiny models; no speed checks."""

import json
import math

import pytest
import torch

from flowsdf.eval.timing import device_name, inference_latency, time_call
from flowsdf.models.conditioner import ConditionerConfig, ImageConditioner
from flowsdf.models.encoder import CNNEncoder, EncoderConfig
from flowsdf.models.sdf import DecoderConfig, SDFDecoder
from flowsdf.models.velocity import VelocityConfig, VelocityNet

SIZE = 16


def tiny_models():
    torch.manual_seed(0)
    encoder = CNNEncoder(EncoderConfig(image_size=SIZE, channels=(8, 8, 8, 8), fc_hidden=32))
    conditioner = ImageConditioner(ConditionerConfig(image_size=SIZE, channels=(8, 16, 16, 16), embed_dim=32))
    velocity = VelocityNet(VelocityConfig(cond_dim=32, hidden=128, depth=2))
    decoder = SDFDecoder(DecoderConfig(hidden=140))
    return encoder, conditioner, velocity, decoder


def assert_timing(t: dict, repeats: int = 1) -> None:
    for key in ("mean_ms", "std_ms", "min_ms"):
        assert math.isfinite(t[key]) and t[key] >= 0
    assert t["mean_ms"] > 0 and t["min_ms"] > 0
    assert t["repeats"] == repeats


def test_time_call_counts_calls_and_reports_milliseconds():
    calls = []
    t = time_call(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5
    assert_timing(t, repeats=3)
    assert t["min_ms"] <= t["mean_ms"]
    with pytest.raises(ValueError):
        time_call(lambda: None, repeats=0)


def test_device_name_is_not_empty():
    name = device_name("cpu")
    assert name.startswith("CPU (") and "threads" in name


def test_inference_latency_has_every_batch_size_and_step_count():
    encoder, conditioner, velocity, decoder = tiny_models()
    out = inference_latency(
        encoder, conditioner, velocity, decoder, sigma=0.5, image_size=SIZE, device="cpu",
        batch_sizes=(1, 4), steps=(1, 2, 4, 8), mesh_resolution=16, repeats=1, warmup=0,
    )
    assert out["device"]
    assert set(out["batch"]) == {"1", "4"}
    for row in out["batch"].values():
        assert_timing(row["encoder"])
        assert set(row["flow"]) == {"1", "2", "4", "8"}
        for t in row["flow"].values():
            assert_timing(t)
    assert_timing(out["mesh"])
    assert out["mesh_resolution"] == 16
    assert out["mesh_faces"] > 0  # bounded field: there is always a surface to extract
    assert json.loads(json.dumps(out)) == out  # string keys survive a JSON round trip


def test_inference_latency_without_encoder_or_without_flow():
    encoder, conditioner, velocity, decoder = tiny_models()
    common = dict(sigma=1.0, image_size=SIZE, device="cpu", batch_sizes=(2,), steps=(1,),
                  mesh_resolution=16, repeats=1, warmup=0)
    flow_only = inference_latency(None, conditioner, velocity, decoder, **common)
    assert set(flow_only["batch"]["2"]) == {"flow"}
    encoder_only = inference_latency(encoder, None, None, decoder, **common)
    assert set(encoder_only["batch"]["2"]) == {"encoder"}
    with pytest.raises(ValueError):
        inference_latency(encoder, conditioner, None, decoder, **common)
