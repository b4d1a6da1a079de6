"""The quick molecule campaign end to end: Prefect flow, MLflow run and registry, generator API, CLI bench."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rdkit import Chem

from testkit import campaign_in

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def campaign(prefect_harness, tmp_path_factory):
    """Run `discover` on configs/molecule-quick.yaml in a fresh working directory."""
    with campaign_in(tmp_path_factory.mktemp("molecule-campaign"), REPO / "configs" / "molecule-quick.yaml") as run:
        yield run


def test_campaign_outputs(campaign):
    s, cfg, out = campaign["summary"], campaign["cfg"], Path(campaign["summary"]["out_dir"])
    assert len(s["rounds"]) == cfg.generate.rounds
    assert cfg.generate.n_per_round > cfg.generate.batch_size  # several batches: forked sample workers in the flow
    for r in s["rounds"]:
        assert r["generated"] == cfg.generate.n_per_round
        assert 0 < r["novel"] <= r["unique"] <= r["valid"] <= r["generated"]
        assert r["structural_validity"] > 0.95  # SELFIES: (nearly) every sample sanitises
    ranked = pd.read_csv(out / "ranked.csv")
    assert len(ranked) == s["ranked"] == sum(r["accepted"] for r in s["rounds"])
    assert ranked["valid"].all() and ranked["unique"].all() and ranked["novel"].all()
    assert ranked["smiles"].is_unique
    sdfs = sorted((out / "top").glob("*.sdf"))
    assert len(sdfs) == min(cfg.rank.top_k, len(ranked))
    assert {p.stem for p in sdfs} == set(ranked["id"].head(len(sdfs)))
    first = next(iter(Chem.SDMolSupplier(str(out / "top" / f"{ranked['id'][0]}.sdf"))))
    assert Chem.MolToSmiles(first) == ranked["smiles"][0]
    assert (out / "top" / "top.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "top" / "molecules.smi").read_text().splitlines()) == len(sdfs)


def test_mlflow_run_has_rounds_table_pictures_and_model(campaign):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=campaign["uri"])
    run = client.get_run(campaign["summary"]["run_id"])
    cfg = campaign["cfg"]
    assert run.data.tags["domain"] == "molecule"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/rec_tokens")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "round/novel")) == cfg.generate.rounds
    top = {a.path for a in client.list_artifacts(run.info.run_id, "candidates/top")}
    assert "candidates/top/top.png" in top and "candidates/top/molecules.smi" in top
    table = client.load_table(experiment_id=run.info.experiment_id, artifact_file="candidates/ranked_candidates.json",
                              run_ids=[run.info.run_id])
    assert {"rank", "id", "smiles", "qed", "pred_logp", "realism"} <= set(table.columns)
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, cfg.tracking.alias)
    assert version.run_id == run.info.run_id


def test_registered_generator_loads_by_alias(campaign, monkeypatch):
    import mlflow

    from design import load_generator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", campaign["uri"])
    gen = load_generator("models:/molecule-generator@champion")
    a = [c.smiles for c in gen.generate(8, seed=5)]
    assert a == [c.smiles for c in gen.generate(8, seed=5)]
    mlflow.set_tracking_uri(campaign["uri"])
    model = mlflow.pyfunc.load_model("models:/molecule-generator@champion")
    out = model.predict(pd.DataFrame({"n": [3], "seed": [0]}))
    assert len(out) == 3 and all(Chem.MolFromSmiles(s) is not None for s in out["structure"])


def test_cli_bench_molecule_runs_the_flow_and_logs_to_mlflow(campaign, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from design.data.sources import resolve
    from flows.cli import main

    ref = tmp_path / "ref.csv"
    pd.read_csv(resolve("molecules/moses/test.csv.gz"), nrows=100).to_csv(ref, index=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", campaign["uri"])
    out = tmp_path / "bench.json"
    rc = main(["bench", "molecule", "--model", "models:/molecule-generator@champion", "--n", "80",
               "--reference", str(ref), "--novelty-train", str(ref), "--fcd-samples", "50", "--fcd-reference", "80", "--snn-samples", "40",
               "--intdiv-samples", "40", "--json", str(out)])
    assert rc == 0
    assert "FCD/Test" in capsys.readouterr().out
    result = json.loads(out.read_text())
    client = MlflowClient(tracking_uri=campaign["uri"])
    runs = client.search_runs([client.get_experiment_by_name("molecule-benchmark").experiment_id])
    assert len(runs) == 1
    logged = runs[0].data
    assert logged.params["n"] == "80" and logged.params["fcd_samples"] == "50"
    assert logged.params["novelty_against"] == str(ref)
    for key in ("valid", "IntDiv", "FCD/Test", "sample_decode_valid_per_s"):
        assert logged.metrics[key] == pytest.approx(result[key]), key
    assert logged.metrics["unique_at_10k"] == pytest.approx(result["unique@10k"])


def test_cli_robust_molecule_compares_variants_on_the_campaign_candidates(campaign, tmp_path, monkeypatch, capsys):
    """`invdes robust molecule` on the quick campaign's accepted molecules: three BACE variants,
    robustness curves, judged top lists, one MLflow run with the table and figures."""
    from mlflow import MlflowClient

    from flows.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", campaign["uri"])
    out = tmp_path / "study"
    rc = main(["robust", "molecule", "--target", "bace", "--pool", campaign["summary"]["out_dir"], "--out", str(out),
               "--members", "1", "--epochs", "1", "--trees", "10", "--budgets", "0,0.05", "--attack-steps", "2",
               "--top-k", "4", "--steps", "2", "--eval-samples", "60"])
    assert rc == 0
    assert "| pgd |" in capsys.readouterr().out
    study = json.loads((out / "study.json").read_text())
    assert set(study["variants"]) == {"standard", "fgsm", "pgd"}
    pool_ids = set(pd.read_csv(Path(campaign["summary"]["out_dir"]) / "ranked.csv")["id"].astype(str))
    for name, v in study["variants"].items():
        top = pd.read_csv(out / f"top_{name}.csv")
        assert len(top) == v["exploitation"]["n"] == 4 and set(top["id"].astype(str)) <= pool_ids
        assert (top["predicted"].diff().dropna() <= 1e-12).all()  # best predicted first (maximised)
        assert len(v["robustness"]["metrics"]["spearman"]) == 2
    client = MlflowClient(tracking_uri=campaign["uri"])
    runs = client.search_runs([client.get_experiment_by_name("molecule-robustness").experiment_id])
    assert len(runs) == 1
    data = runs[0].data
    assert data.metrics["pgd/gap"] == pytest.approx(study["variants"]["pgd"]["exploitation"]["gap"])
    assert "standard/robust_spearman_at_0.05" in data.metrics and "random/hit_rate" in data.metrics
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "study")}
    assert {"study/study.md", "study/robustness.png", "study/exploitation.png"} <= arts


def test_goal_directed_round_scores_feeds_back_and_reports(campaign):
    """A one-round goal-directed campaign on the quick generator (reused from the campaign above) with
    a tiny activity model: scored round, seed actives in the prior, goal report vs the baseline, MLflow."""
    import torch
    from mlflow import MlflowClient

    from testkit import tiny_activity_files

    csv, model = tiny_activity_files(campaign["work"] / "activity")
    overrides = {
        "generate": {"rounds": 1, "n_per_round": 120, "feedback_spread": 0.5},
        "activity": {"datasets": {"gsk3": str(csv)}, "models": {"gsk3": str(model)}, "seed_actives": 4,
                     "feedback_top": 10, "final_top": 20, "baseline": 16, "judge_trees": 10},
        "rank": {"property_weights": {"act_gsk3": 2.0, "qed": 1.0, "sa": 1.0},
                 "property_goals": {"act_gsk3": "maximize", "qed": "maximize", "sa": "minimize"}},
        "tracking": {"experiment": "kinase-quick", "registered_model": "kinase-quick-generator"},
    }
    with campaign_in(campaign["work"], REPO / "configs" / "molecule-quick.yaml", overrides, out="goal") as run:
        s = run["summary"]
    out = Path(s["out_dir"])
    assert s["checkpoint"] == campaign["summary"]["checkpoint"]  # same generator sections: reused
    report = json.loads((out / "goal.json").read_text())
    assert s["goal"]["top"]["n"] == report["top"]["n"] == min(20, report["ranked"])
    assert 0 < report["baseline"]["n"] <= 16 and report["judge_held_out"]["gsk3"]["roc_auc"] >= 0
    round0 = s["rounds"][0]
    assert round0["goal_n"] + round0["goal_known"] == round0["accepted"]
    top = pd.read_csv(out / "goal_top.csv")
    assert {"act_gsk3", "act_gsk3_std", "judge_gsk3", "qed", "sa", "success"} <= set(top.columns)
    assert top["smiles"].tolist() == pd.read_csv(out / "ranked.csv")["smiles"].head(len(top)).tolist()
    assert len(pd.read_csv(out / "seed_actives.csv")) == 4
    tuned = out / "round_00" / "generator.pt"  # fine-tuned on the seed actives before round 0 sampled from it
    assert s["registered_checkpoint"] == str(tuned)
    assert 1 <= torch.load(tuned, weights_only=True)["finetune"][0]["objects"] <= 4  # the encodable seeds
    client = MlflowClient(tracking_uri=run["uri"])
    run_id = s["run_id"]
    assert client.get_run(run_id).data.metrics["final/top_success_rate"] == pytest.approx(report["top"]["success_rate"])
    assert {a.path for a in client.list_artifacts(run_id, "goal")} >= {"goal/goal.json", "goal/goal_top.csv"}
    version = client.get_model_version_by_alias("kinase-quick-generator", "champion")
    assert version.tags["fine_tuned_in"] == "round_00" and version.run_id == run_id
