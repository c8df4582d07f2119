"""The latency benchmark's plumbing (keys, units, device name) with tiny models; no speed checks."""

import json
import math

import pytest

from flowsdf.device import device_name
from flowsdf.pipeline import FlowSDF
from flowsdf.speed.timing import inference_latency, time_call


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


def test_inference_latency_has_every_batch_size_and_step_count(tiny_surface_run):
    out = inference_latency(FlowSDF.from_run(tiny_surface_run, "flow"), batch_sizes=(1, 4), steps=(1, 2, 4, 8),
                            mesh_resolution=16, repeats=1, warmup=0)
    assert out["device"]
    assert set(out["batch"]) == {"1", "4"}
    for row in out["batch"].values():
        assert set(row) == {"flow"}  # a flow has no encoder to time
        assert set(row["flow"]) == {"1", "2", "4", "8"}
        for t in row["flow"].values():
            assert_timing(t)
    assert_timing(out["mesh"])
    assert out["mesh_resolution"] == 16
    assert out["mesh_faces"] > 0  # the meshing really ran
    assert json.loads(json.dumps(out)) == out  # string keys survive a JSON round trip


def test_inference_latency_of_the_cnn_times_its_encoder(tiny_stage1_run):
    out = inference_latency(FlowSDF.from_run(tiny_stage1_run, "cnn"), batch_sizes=(2,), steps=(1,),
                            mesh_resolution=16, repeats=1, warmup=0)
    assert set(out["batch"]["2"]) == {"encoder"}
    assert_timing(out["batch"]["2"]["encoder"])
