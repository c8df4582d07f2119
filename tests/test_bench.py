"""`flowsdf bench --quick`: one run prints the table and writes every figure as JSON."""

import json

import torch

from flowsdf.cli import main


def test_bench_quick_writes_all_figures(tmp_path, capsys):
    out = tmp_path / "b" / "bench.json"
    assert main(["bench", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["torch"] == torch.__version__ and r["device"].startswith("CPU")
    assert set(r["train_step"]) == {"naive", "exhaustive_f32", "exhaustive_bf16", "coarse_bf16"}
    assert all(v["images_per_s"] > 0 for v in r["train_step"].values())
    assert set(r["flow"]) == {"1", "4"} and set(r["flow"]["1"]) == {"1", "8"}
    assert all(e["reference"]["mean_ms"] > 0 and e["fast"]["mean_ms"] > 0 for e in r["flow"]["4"].values())
    assert set(r["flow_dit"]) == {"1", "4"} and r["flow_dit"]["1"]["8"]["fast"]["mean_ms"] > 0  # the DiT's latency
    assert r["mesh"]["resolution"] == 32 and r["mesh"]["mean_ms"] > 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "DiT velocity net" in printed


def test_bench_rejects_a_bad_batch(capsys):
    assert main(["bench", "--quick", "--batch", "0"]) == 2
    assert capsys.readouterr().err.startswith("flowsdf: error:")
