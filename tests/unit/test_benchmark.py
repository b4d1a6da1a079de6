"""The crystal benchmark on a tiny generator and a small reference split (real crystals)."""

import json
import logging

import pandas as pd
import pytest

from design import load_generator
from design.benchmark import TARGETS, format_table, run_crystal_benchmark, target_rows, write_json


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory):
    from design.data.sources import resolve

    path = tmp_path_factory.mktemp("ref") / "ref.csv.gz"
    pd.read_csv(resolve("crystals/mp_20_biternary/test.csv.gz"), nrows=24).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def result(tiny_checkpoint, small_reference):
    gen = load_generator(tiny_checkpoint)
    return run_crystal_benchmark(gen, n=64, seed=0, reference=small_reference, w1_samples=10, workers=1)


def test_counts_and_rates_are_consistent(result):
    assert result["n"] == 64
    assert 0 < result["valid"] <= 64
    assert 0 <= result["novel"] <= result["unique"] <= result["valid"]
    assert result["validity"] == pytest.approx(result["valid"] / 64)
    assert result["validity"] <= min(result["structural_validity"], result["compositional_validity"])
    for key in ("uniqueness", "novelty", "cov_recall", "cov_precision"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["w1_density"] >= 0 and result["w1_n_elements"] >= 0
    assert result["w1_density_all_valid"] >= 0 and result["w1_n_elements_all_valid"] >= 0
    assert result["info"]["reference_size"] == 24
    assert result["info"]["w1_samples"] == min(10, result["valid"])
    assert result["info"]["cov_samples"] == result["valid"]
    assert result["sample_decode_check_per_s"] > result["generate_filter_rank_per_s"] > 0
    assert result["train_wall_min"] > 0 and result["train_cpu_min"] > 0


def test_same_seed_same_numbers(tiny_checkpoint, small_reference, result, caplog):
    gen = load_generator(tiny_checkpoint)
    with caplog.at_level(logging.INFO, logger="design.benchmark"):
        again = run_crystal_benchmark(gen, n=64, seed=0, reference=small_reference, w1_samples=10, workers=1)
    assert "from cache" in caplog.text  # reference fingerprints are computed once
    for key in ("valid", "unique", "novel", "cov_recall", "cov_precision", "w1_density", "w1_n_elements"):
        assert again[key] == result[key], key


def test_table_and_json(result, tmp_path):
    table = format_table(result)
    for name, *_ in TARGETS:
        assert name in table
    path = write_json(result, tmp_path / "bench.json")
    back = json.loads(path.read_text())
    assert back["valid"] == result["valid"]
    assert [row["metric"] for row in back["targets"]] == [t[0] for t in TARGETS]


def test_target_rows_judge_both_directions():
    rows = {r["metric"]: r for r in target_rows({"structural_validity": 0.999, "w1_density": 0.7, "novelty": float("nan")})}
    assert rows["structural_validity"]["met"] is True
    assert rows["w1_density"]["met"] is False
    assert rows["novelty"]["met"] is None and rows["uniqueness"]["met"] is None


def test_bad_arguments(tiny_checkpoint, small_reference):
    gen = load_generator(tiny_checkpoint)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        run_crystal_benchmark(gen, n=1, reference=small_reference)
    with pytest.raises(ValueError, match="w1_samples"):
        run_crystal_benchmark(gen, n=8, reference=small_reference, w1_samples=0)
