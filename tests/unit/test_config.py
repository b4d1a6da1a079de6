from pathlib import Path

import pytest
from pydantic import ValidationError

from design.config import ConfigError, RunConfig, config_from_dict, generator_key, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, RunConfig)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epochz'"):
        config_from_dict({"train": {"epochz": 3}})


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        config_from_dict({"trian": {}})


def test_bad_value_names_value():
    with pytest.raises(ConfigError, match=r"train.epochs.*got 0"):
        config_from_dict({"train": {"epochs": 0}})


def test_target_must_be_a_known_property():
    with pytest.raises(ConfigError, match=r"generate.target names \['band_gap'\].*data.properties"):
        config_from_dict({"generate": {"target": {"band_gap": 1.0}}})


def test_target_goal_needs_value():
    with pytest.raises(ConfigError, match=r"needs a value in generate.target"):
        config_from_dict({"rank": {"property_goals": {"formation_energy_per_atom": "target"}}})


def test_grammar_valence_needs_the_grammar_features():
    with pytest.raises(ConfigError, match=r"grammar_valence=true.*grammar_features: true"):
        config_from_dict({"model": {"grammar_valence": True}})


def test_density_range_checked():
    with pytest.raises(ConfigError, match="density_min"):
        config_from_dict({"penalty": {"density_min": 30.0}})


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_and_generator_key(tmp_path):
    base = load_config(CONFIGS / "crystal-quick.yaml")
    same = load_config(CONFIGS / "crystal-quick.yaml", {"generate": {"n_per_round": 7}, "name": "other"})
    changed = load_config(CONFIGS / "crystal-quick.yaml", {"train": {"epochs": 7}})
    assert same.generate.n_per_round == 7
    # generation settings and the name do not change the trained generator; training settings do
    assert generator_key(base) == generator_key(same)
    assert generator_key(base) != generator_key(changed)


def test_flatten_differences():
    from design.config import flatten_differences

    a = {"train": {"epochs": 3, "lr_g": 1e-3}, "name": "x"}
    b = {"train": {"epochs": 4, "lr_g": 1e-3}, "name": "x", "seed": 1}
    assert flatten_differences(a, b) == ["seed", "train.epochs"]


def test_same_generator_ignores_campaign_only_sections():
    from design.config import same_generator

    from testkit import tiny_config

    base = tiny_config()
    stored = base.model_dump(mode="json")
    assert same_generator(stored, tiny_config(name="other", generate={"rounds": 5}, rank={"top_k": 3}))
    assert same_generator(stored, tiny_config(train={"threads": 1}))  # run control, not learning
    assert not same_generator(stored, tiny_config(train={"epochs": 3}))
    assert not same_generator(stored, tiny_config(penalty={"distance_scale": 0.7}))
    assert not same_generator({"train": {"epochz": 1}}, base)  # a stored config that no longer validates


def test_closed_loop_sections_checked():
    with pytest.raises(ConfigError, match="verify section needs a surrogate"):
        config_from_dict({"verify": {}})
    with pytest.raises(ConfigError, match="prior_focus needs generate.target"):
        config_from_dict({"generate": {"prior_focus": 8}})
    with pytest.raises(ConfigError, match=r"rank.property_weights names \['sur_e_3d'\]"):
        config_from_dict({"rank": {"property_weights": {"sur_e_3d": 1.0}}})
    cfg = config_from_dict({"surrogate": {"target": "e_3d"}, "rank": {"property_weights": {"sur_e_3d": 1.0}}})
    assert cfg.surrogate.column == "sur_e_3d"
