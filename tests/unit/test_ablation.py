"""Ablation specs: validation, variant configs, the table."""

from pathlib import Path

import pytest
import yaml

from design.ablation import format_markdown, load_spec, read_results, result_path, select_variants
from design.config import ConfigError

from testkit import tiny_config


def _write(tmp_path, spec: dict):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **spec}, sort_keys=False))
    return path


def test_variants_merge_base_set_and_own_overrides(tmp_path):
    path = _write(tmp_path, {
        "set": {"train": {"epochs": 1}},
        "bench": {"n": 16},
        "variants": {"plain": {}, "vae_only": {"train": {"adv_weight": 0.0}}, "hinge": {"train": {"gan_loss": "hinge"}}},
    })
    study = load_spec(path)
    assert study.base_name == "tiny" and study.spec.bench.n == 16
    c = study.configs
    assert list(c) == ["plain", "vae_only", "hinge"]
    assert all(cfg.train.epochs == 1 for cfg in c.values())
    assert c["vae_only"].train.adv_weight == 0.0 and c["plain"].train.adv_weight > 0
    assert c["hinge"].train.gan_loss == "hinge" and c["plain"].train.gan_loss == "non_saturating"
    assert c["hinge"].name == "tiny-hinge"


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"variants": {"a": {"train": {"epoch": 3}}}}, "unknown key 'train.epoch'"),
        ({"variants": {}}, "variants"),
        ({"variants": {"a": {}}, "bench": {"n": 1}}, "bench.n"),
        ({"variants": {"a": {}}, "colour": 1}, "colour"),
        ({"variants": {"a b": {}}}, "'a b'"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, spec, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(_write(tmp_path, spec))


def test_variant_selection_keeps_spec_order_and_names_unknown_ones(tmp_path):
    study = load_spec(_write(tmp_path, {"variants": {"a": {}, "b": {}, "c": {}}}))
    assert select_variants(study, None) == ["a", "b", "c"]
    assert select_variants(study, ["c", "a"]) == ["a", "c"]
    with pytest.raises(ConfigError, match=r"'d'.*defines a, b, c"):
        select_variants(study, ["a", "d"])


def test_missing_spec_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_table_and_resume_files(tmp_path):
    result_path(tmp_path, "a").write_text('{"structural_validity": 0.99, "cov_recall": 0.5}')
    results = read_results(tmp_path, ["a", "b"])
    assert list(results) == ["a"]  # b has not finished
    table = format_markdown(results, {"a": {"train": {"gan_loss": "hinge"}}})
    lines = table.splitlines()
    assert lines[0].startswith("| variant | overrides | struct | comp")
    assert "| a | train.gan_loss=hinge | 0.990 | - |" in lines[2]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs" / "ablations").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_ablation_specs_validate(path):
    study = load_spec(path)
    assert study.configs
