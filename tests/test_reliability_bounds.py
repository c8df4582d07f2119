"""Every number a command takes has a documented upper bound, checked before anything is built."""

from __future__ import annotations

import re

import pytest

from flowsdf.cli import build_parser, main, options

NO_RUN = "/proc/flowsdf_no_run"  # neither a run nor writable: any work at all fails on it first

# (command, option, (low, high), argv before the option): the argv alone would fail at once on
# NO_RUN, so an error naming the option shows that the bound is checked before anything else.
BOUNDED = [
    ("data", "--workers", options.WORKERS, ["data", "--preset", "tiny", "--out", NO_RUN]),
    ("train", "--threads", options.THREADS, ["train", "--stage", "cnn", "--preset", "tiny", "--out", NO_RUN]),
    ("train", "--until-epoch", options.EPOCHS, ["train", "--stage", "cnn", "--preset", "tiny", "--out", NO_RUN]),
    ("eval", "--k", options.SAMPLES, ["eval", NO_RUN]),
    ("eval", "--mesh-resolution", options.MESH_RESOLUTION, ["eval", NO_RUN]),
    ("eval", "--refine", options.REFINE_STEPS, ["eval", NO_RUN]),
    ("eval", "--temperature", options.TEMPERATURE, ["eval", NO_RUN]),
    ("eval", "--consistency", options.CONSISTENCY, ["eval", NO_RUN]),
    ("reconstruct", "--temperature", options.TEMPERATURE, ["reconstruct", NO_RUN, "--run", NO_RUN, "--out", NO_RUN]),
    ("reconstruct", "--consistency", options.CONSISTENCY, ["reconstruct", NO_RUN, "--run", NO_RUN, "--out", NO_RUN]),
    ("bench", "--batch", options.BENCH_BATCH, ["bench", "--quick", "--run", NO_RUN]),
    ("bench", "--threads", options.THREADS, ["bench", "--quick", "--run", NO_RUN]),
    ("check-grads", "--batch", options.GRAD_BATCH, ["check-grads", NO_RUN]),
]


def help_of(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return re.sub(r"\s+", " ", sub.format_help())


@pytest.mark.parametrize("command, option, bounds, argv", BOUNDED, ids=[f"{c} {o}" for c, o, _, _ in BOUNDED])
def test_every_command_line_number_has_a_documented_bound_checked_first(capsys, command, option, bounds, argv):
    low, high = bounds
    assert f"{low:,} to {high:,}" in help_of(command)
    for bad in (low - 1, high + 1):
        assert main([*argv, option, str(bad)]) == 2
        err = capsys.readouterr().err
        assert err == f"flowsdf: error: {option} must be from {low:,} to {high:,}, got {bad}\n"


def test_data_seed_is_checked_like_the_config_field(capsys, tmp_path):
    assert main(["data", "--preset", "tiny", "--out", str(tmp_path / "d"), "--seed", "-1"]) == 2
    assert capsys.readouterr().err.startswith("flowsdf: error: config: data.seed must be an integer >= 0, got -1")
    assert not (tmp_path / "d").exists()
