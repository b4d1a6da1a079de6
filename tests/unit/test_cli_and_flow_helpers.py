"""Plain-function parts of flows/ (no Prefect server needed)."""

import json

import pytest

from design.config import ConfigError, RunConfig
from flows.cli import _generate_settings, _overrides, _targets, main
from flows.discover import _check_campaign_dir


def test_overrides_parse_yaml_scalars():
    assert _overrides(["train.epochs=5", "generate.target={formation_energy_per_atom: -2.0}", "name=x"]) == {
        "train": {"epochs": 5},
        "generate": {"target": {"formation_energy_per_atom": -2.0}},
        "name": "x",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _overrides(["train.epochs"])


def test_targets_parse():
    assert _targets(["formation_energy_per_atom=-1.5"]) == {"formation_energy_per_atom": -1.5}
    with pytest.raises(ConfigError, match="PROPERTY=NUMBER"):
        _targets(["formation_energy_per_atom=low"])


def test_bench_takes_sampling_settings_only():
    from types import SimpleNamespace

    args = SimpleNamespace(set=["generate.latent_prior=mixture", "generate.prior_spread=0.3"], temperature=0.8,
                           constrained=False)
    assert _generate_settings(args) == {"latent_prior": "mixture", "prior_spread": 0.3, "temperature": 0.8,
                                        "constrained_decoding": False}
    assert _generate_settings(SimpleNamespace(set=None, temperature=None, constrained=None)) == {}
    with pytest.raises(ConfigError, match=r"generate\.\* keys only.*\['train'\]"):
        _generate_settings(SimpleNamespace(set=["train.epochs=3"], temperature=None, constrained=None))


def test_campaign_dir_guards_against_another_config(tmp_path):
    cfg = RunConfig().model_dump(mode="json")
    _check_campaign_dir(tmp_path, cfg)  # empty directory: fine
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _check_campaign_dir(tmp_path, cfg)  # same config: resumes
    other_tracking = {**cfg, "tracking": {**cfg["tracking"], "experiment": "elsewhere"}}
    _check_campaign_dir(tmp_path, other_tracking)  # where results are logged does not matter
    changed = {**cfg, "generate": {**cfg["generate"], "n_per_round": 5}}
    with pytest.raises(ValueError, match="generate.n_per_round"):
        _check_campaign_dir(tmp_path, changed)


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.epochz'" in err
