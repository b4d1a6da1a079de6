"""A one-round electrolyte closed loop end to end on a small oracle-labelled set: Prefect flow, the
surrogate, BVSE and CHGNet verification, fine-tuning, enrichment, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from testkit import TRAIN, campaign_in

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SETTINGS = {"resolution": 0.4, "time_limit_s": 60.0}  # a coarse grid keeps the oracle fast


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """Oracle labels of the first 30 Li-containing training crystals (a real, small labels table)."""
    from property_models.bvse import BVSEOracle, BVSESettings
    from property_models.labels import csv_entries, label_rows, provenance, write_labels

    folder = tmp_path_factory.mktemp("labels")
    entries = csv_entries(TRAIN)[0][:30]
    settings = BVSESettings(**SETTINGS)
    results = BVSEOracle(folder / "cache", settings, workers=2).evaluate([e.structure for e in entries])
    table = label_rows(entries, results)
    assert table["ok"].sum() >= 10
    return write_labels(table, provenance([TRAIN], settings, table, {}, 0.0), folder / "bvse_li.csv.gz")


@pytest.fixture(scope="module")
def loop(prefect_harness, labels, tmp_path_factory):
    work = tmp_path_factory.mktemp("closed-loop")
    overrides = {
        "data": {"limit": 800, "property_table": str(work / "e_3d.csv")},
        "train": {"epochs": 3},
        "generate": {"rounds": 1, "n_per_round": 200, "prior_focus": 8},
        "surrogate": {"labels": str(labels), "epochs": 15, "finetune_epochs": 2},
        # the tiny generator makes few Li candidates: verify them whether or not the oracle can evaluate
        # them (the screens themselves are unit-tested), so the oracle path always runs
        "verify": {**SETTINGS, "top_k": 3, "final_top": 4, "baseline": 4, "reference_size": 16,
                   "require_valences": False, "require_evaluable": False},
    }
    with campaign_in(work, REPO / "configs" / "electrolyte-quick.yaml", overrides) as run:
        yield {**run, "out": Path(run["summary"]["out_dir"])}


def test_round_files_and_metrics(loop):
    out, (r,) = loop["out"], loop["summary"]["rounds"]
    rdir = out / "round_00"
    for name in ("generated.csv.gz", "accepted.csv.gz", "scored.csv.gz", "verified.csv.gz", "verify.json", "surrogate.pt"):
        assert (rdir / name).is_file(), name
    assert 0 < r["verify_verified"] <= 3 and 0 <= r["verify_hits"] <= r["verify_oracle_ok"] <= r["verify_verified"]
    assert r["verify_screened"] >= r["verify_eligible"] == r["verify_verified"]
    assert r["verify_threshold"] > 0
    assert r["with_required_parts"] >= r["accepted"]
    accepted = pd.read_csv(rdir / "accepted.csv.gz")
    assert all("Li" in f for f in accepted["formula"])  # the filter kept Li-containing candidates only
    verified = pd.read_csv(rdir / "verified.csv.gz")
    scored = pd.read_csv(rdir / "scored.csv.gz").sort_values("sur_e_3d")
    assert set(verified["id"]) <= set(scored["id"])
    assert (scored["sur_e_3d_std"] >= 0).all()
    assert np.isfinite(scored["stab_excess"]).all()  # surrogate.stability: CHGNet on every candidate
    assert scored["stab_excess_percentile"].between(0, 1).all()
    table = pd.read_csv(out.parent / "e_3d.csv")  # the generator's property table, from the labels
    assert set(table.columns) == {"material_id", "e_3d"} and table["e_3d"].between(0, 5.0).all()


def test_final_ranking_and_enrichment(loop):
    out, closing = loop["out"], loop["summary"]["closed_loop"]
    ranked = pd.read_csv(out / "ranked.csv")
    assert len(ranked) == closing["ranked"] > 0
    assert {"sur_e_3d", "sur_e_3d_std", "stab_excess", "stab_excess_percentile", "pareto", "ver_e_3d",
            "verified_in_round"} <= set(ranked.columns)
    assert ranked[["stab_excess", "stab_excess_percentile"]].notna().all().all()  # carried over from scoring, not recomputed
    assert ranked["score"].is_monotonic_decreasing and ranked["pareto"].any()
    enrich = json.loads((out / "enrichment.json").read_text())
    assert enrich["top"]["n"] == min(4, len(ranked)) and enrich["top_screened"] == enrich["top"]["n"]
    assert enrich["baseline"]["n"] == min(4, len(ranked)) and "baseline_eligible" not in enrich
    ratio = enrich["enrichment_vs_baseline"]  # undefined against a zero baseline rate: null, never Infinity
    assert (ratio is None) == (not enrich["baseline"]["hit_fraction"]) and (ratio is None or ratio >= 0)
    top = pd.read_csv(out / "enrichment_top.csv")
    assert top["id"].tolist() == ranked["id"].head(len(top)).tolist()
    assert (top["oracle_ok"] | (top["oracle_failure"].fillna("") != "")).all()  # a failure has its reason
    assert np.isfinite(top["chgnet_energy_per_atom"]).any()
    for name in ("predicted_vs_verified.png", "barrier_distribution.png"):
        assert (out / "plots" / name).stat().st_size > 1000


def test_mlflow_records_the_loop(loop):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=loop["uri"])
    run_id = loop["summary"]["run_id"]
    for name in ("round/verify_hit_rate", "round/verify_verified", "round/accepted"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [0], name
    metrics = client.get_run(run_id).data.metrics
    assert "final/top_hit_fraction" in metrics and "final/baseline_hit_fraction" in metrics
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/predicted_vs_verified.png" in plots
    assert {a.path for a in client.list_artifacts(run_id, "closed_loop")} >= {"closed_loop/enrichment.json"}
