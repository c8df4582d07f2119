"""Every config field is checked for type and range when a config is read."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from flowsdf import config as config_mod
from flowsdf.cli import main
from flowsdf.errors import FlowSDFError


def sections(cls=config_mod.Config, path="") -> list[tuple[str, type]]:
    """Every config dataclass in the tree, with its dotted path."""
    out = [(path, cls)]
    for name, t in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(t):
            out += sections(t, f"{path}.{name}" if path else name)
    return out


def test_every_field_has_a_range_rule():
    for path, cls in sections():
        leaves = {n for n, t in typing.get_type_hints(cls).items() if not dataclasses.is_dataclass(t)}
        missing = leaves - set(getattr(cls, "RULES", {}))
        assert not missing, f"{cls.__name__} ({path or 'the config'}) fields without a rule in its RULES: {sorted(missing)}"


# Integers that size nothing: seeds, a count of warm-up steps, how many shapes to score.
UNBOUNDED = {"seed", "data.seed", "stage1.warmup_steps", "phase2.warmup_steps", "eval.train_shapes"}


def test_every_size_like_integer_has_an_upper_bound(tiny_cfg):
    """No config can ask for an allocation its rules do not allow: a billion is refused everywhere."""
    d = config_mod.to_dict(tiny_cfg)
    for path, cls in sections():
        for name, t in typing.get_type_hints(cls).items():
            key = f"{path}.{name}" if path else name
            if t is not int or key in UNBOUNDED:
                continue
            bad = json.loads(json.dumps(d))
            node = bad
            for part in key.split(".")[:-1]:
                node = node[part]
            node[name] = 10**9
            with pytest.raises(FlowSDFError, match=f"config: {key} must be"):
                config_mod.from_dict(bad)


@pytest.mark.parametrize("name", list(config_mod.PRESETS))
def test_presets_pass_the_checks(name):
    cfg = config_mod.preset(name)
    assert config_mod.loads(config_mod.dumps(cfg)) == cfg


@pytest.mark.parametrize("section, key, value, words", [
    ("render", "n_samples", "abc", "render.n_samples must be an integer from 1 to 512, got \"abc\""),
    ("render", "n_samples", -5, "render.n_samples must be an integer from 1 to 512, got -5"),
    ("stage1", "lr", True, "stage1.lr must be a positive number"),
    ("stage1", "ema_decay", 1.0, "stage1.ema_decay must be a number in [0, 1)"),
    ("data", "ambient", 2, "data.ambient must be a number in [0, 1]"),
    ("encoder.cnn", "channels", [32, "x"], "encoder.cnn.channels must be a non-empty list of integers from 1 to 4,096"),
    ("velocity", "kind", "rnn", "velocity.kind must be 'mlp' or 'dit'"),
    ("decoder.mlp", "hidden", 100, "decoder.mlp.hidden must exceed"),
    ("data", "seed", -1, "data.seed must be an integer >= 0"),
])
def test_bad_values_are_one_line_naming_the_field(tiny_cfg, section, key, value, words):
    d = config_mod.to_dict(tiny_cfg)
    node = d
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(FlowSDFError) as e:
        config_mod.loads(json.dumps(d))
    assert str(e.value).startswith("config: ") and words in str(e.value) and "\n" not in str(e.value)


def test_a_run_with_a_bad_value_is_refused_by_the_cli(capsys, tmp_path, tiny_cfg):
    run = tmp_path / "r"
    run.mkdir()
    d = config_mod.to_dict(tiny_cfg)
    d["render"]["n_samples"] = -5
    (run / "config.json").write_text(json.dumps(d))
    for argv in (["train", "--stage", "cnn", "--out", str(run), "--resume"], ["eval", str(run)], ["check-grads", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == "flowsdf: error: config: render.n_samples must be an integer from 1 to 512, got -5\n"


def test_an_older_runs_config_layout_reads_as_the_same_config():
    """Runs written before the configuration kinds kept each section's settings at its top level
    (and the SDF-SRN terms in the phase, render.refine_*): they read as today's config, exactly."""
    cfg = config_mod.preset("quick")
    d = config_mod.to_dict(cfg)
    legacy = json.loads(json.dumps(d))
    for section, kind in (("encoder", "cnn"), ("decoder", "mlp"), ("conditioner", "cnn"), ("velocity", "mlp")):
        legacy[section].update(legacy[section].pop(kind))
        for other in [k for k in legacy[section] if isinstance(legacy[section][k], dict)]:
            legacy[section].pop(other)
        legacy[section].pop("kind")
    legacy["encoder"].pop("table_init_std")
    legacy["conditioner"].pop("weights")
    legacy["encoder"]["image_size"] = legacy["conditioner"]["image_size"] = 32  # derived today
    legacy["velocity"].update(cond_dim=256, latent_dim=128)
    legacy["decoder"]["xyz_frequencies"] = 0
    for phase in ("stage1", "phase2"):
        legacy[phase].update(legacy[phase].pop("sdfsrn"))
    legacy["render"]["refine_margin"] = legacy["render"].pop("fine_margin")
    legacy["render"]["refine_tau"] = legacy["render"].pop("fine_tau")
    assert "cnn" not in legacy["encoder"] and "eikonal_weight" in legacy["stage1"]
    assert config_mod.from_dict(legacy) == cfg
    legacy["decoder"]["xyz_frequencies"] = 6
    with pytest.raises(FlowSDFError, match="Fourier xyz features"):
        config_mod.from_dict(legacy)
