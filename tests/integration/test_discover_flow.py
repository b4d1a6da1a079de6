"""The quick discovery campaign end to end: Prefect flow, MLflow run, registry, API, CLI, example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from testkit import campaign_in

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def campaign(prefect_harness, tmp_path_factory):
    """Run `discover` on configs/crystal-quick.yaml in a fresh working directory."""
    with campaign_in(tmp_path_factory.mktemp("campaign"), REPO / "configs" / "crystal-quick.yaml") as run:
        yield run


def test_campaign_outputs(campaign):
    s, cfg, out = campaign["summary"], campaign["cfg"], Path(campaign["summary"]["out_dir"])
    assert len(s["rounds"]) == cfg.generate.rounds
    for r in s["rounds"]:
        assert r["generated"] == cfg.generate.n_per_round
        assert 0 <= r["novel"] <= r["unique"] <= r["valid"] <= r["generated"]
    ranked = pd.read_csv(out / "ranked.csv")
    assert len(ranked) == s["ranked"] == sum(r["accepted"] for r in s["rounds"])
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert ranked["score"].is_monotonic_decreasing
    assert ranked["valid"].all() and ranked["unique"].all() and ranked["novel"].all()
    cifs = sorted((out / "top").glob("*.cif"))
    assert len(cifs) == min(cfg.rank.top_k, len(ranked))
    assert {p.stem for p in cifs} == set(ranked["id"].head(len(cifs)))


def test_mlflow_run_contents(campaign):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=campaign["uri"])
    run = client.get_run(campaign["summary"]["run_id"])
    cfg = campaign["cfg"]
    assert run.data.params["train.epochs"] == str(cfg.train.epochs)
    assert run.data.params["data.train"] == cfg.data.train
    epochs = client.get_metric_history(run.info.run_id, "train/rec_palette")
    assert [m.step for m in epochs] == list(range(1, cfg.train.epochs + 1))
    assert len(client.get_metric_history(run.info.run_id, "train/mon_unique")) == cfg.train.epochs
    for name in ("generated", "valid", "unique", "novel", "mean_realism", "mean_penalty", "structural_validity"):
        hist = client.get_metric_history(run.info.run_id, f"round/{name}")
        assert [m.step for m in hist] == list(range(cfg.generate.rounds)), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "candidates")}
    assert {"candidates/ranked.csv", "candidates/ranked_candidates.json"} <= artifacts
    table = client.load_table(
        experiment_id=run.info.experiment_id, artifact_file="candidates/ranked_candidates.json",
        run_ids=[run.info.run_id],
    )
    assert len(table) == campaign["summary"]["ranked"]
    assert {"rank", "id", "formula", "realism", "pred_formation_energy_per_atom"} <= set(table.columns)
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, cfg.tracking.alias)
    assert version.run_id == run.info.run_id


def test_registered_generator_loads_by_alias(campaign, monkeypatch):
    import mlflow

    from design import load_generator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", campaign["uri"])
    gen = load_generator("models:/crystal-generator@champion")
    a = gen.generate(6, seed=11)
    b = gen.generate(6, seed=11)
    assert [c.structure.as_dict() for c in a] == [c.structure.as_dict() for c in b]
    # the pyfunc flavour (models-from-code) works too, without unpickling a Python object
    mlflow.set_tracking_uri(campaign["uri"])
    model = mlflow.pyfunc.load_model("models:/crystal-generator@champion")
    out = model.predict(pd.DataFrame({"n": [3], "seed": [0]}))
    assert len(out) == 3 and out["structure"].str.contains("_cell_length_a").all()


def test_rerun_reuses_generator_and_resumes_rounds(campaign):
    from flows.discover import discover

    s = campaign["summary"]
    ckpt = Path(s["checkpoint"])
    mtime = ckpt.stat().st_mtime_ns
    os.chdir(campaign["work"])
    again = discover(campaign["cfg"].model_dump(mode="json"), s["out_dir"])
    assert again["checkpoint"] == s["checkpoint"] and ckpt.stat().st_mtime_ns == mtime
    assert again["rounds"] == s["rounds"]  # finished rounds were read back, not regenerated
    assert int(again["model_version"]) == int(s["model_version"]) + 1


def test_crash_mid_round_keeps_finished_rounds_and_resumes(campaign, tmp_path, monkeypatch):
    """A campaign that dies while filtering round 1 keeps round 0 untouched and resumes at round 1."""
    import design.generation.loop as loop
    from flows.discover import discover

    os.chdir(campaign["work"])
    cfg = campaign["cfg"].model_dump(mode="json")
    out = tmp_path / "crashy"
    original = loop.filter_round

    def dying(domain, config, k, out_dir, reference):
        if k == 1:
            raise KeyboardInterrupt("killed while filtering round 1")
        return original(domain, config, k, out_dir, reference)

    monkeypatch.setattr(loop, "filter_round", dying)
    with pytest.raises(KeyboardInterrupt):
        discover(cfg, str(out))
    round0 = {p.name: p.read_bytes() for p in (out / "round_00").iterdir()}
    assert "counts.json" in round0 and not (out / "round_01" / "counts.json").exists()
    assert (out / "round_01" / "generated.csv.gz").exists()  # generated before the crash

    monkeypatch.setattr(loop, "filter_round", original)
    resumed = discover(cfg, str(out))
    assert {p.name: p.read_bytes() for p in (out / "round_00").iterdir()} == round0  # reused, not redone
    assert [r["round"] for r in resumed["rounds"]] == [0, 1]
    assert resumed["rounds"] == campaign["summary"]["rounds"]  # same seeds: same rounds as an unbroken run
    assert (out / "ranked.csv").exists()


def test_cli_generate_and_downstream_example(campaign, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": campaign["uri"]}
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "flows.cli", "generate", "--model", "models:/crystal-generator@champion",
           "--n", "4", "--seed", "0", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, text=True)
    table = pd.read_csv(out / "candidates.csv")
    assert len(table) == 4 and len(list((out / "structures").glob("*.cif"))) == 4
    assert all((out / f).is_file() for f in table["file"])

    example = subprocess.run(
        [sys.executable, str(REPO / "examples" / "relax_with_chgnet.py"), "--model", "models:/crystal-generator@champion",
         "--n", "1", "--steps", "5"],
        check=True, env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert "energy per atom" in example.stdout


def test_cli_bench_runs_the_flow_and_logs_to_mlflow(campaign, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from design.data.sources import resolve
    from flows.cli import main

    ref = tmp_path / "ref.csv.gz"
    pd.read_csv(resolve("crystals/mp_20_biternary/test.csv.gz"), nrows=16).to_csv(ref, index=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", campaign["uri"])
    out = tmp_path / "bench.json"
    rc = main(["bench", "crystal", "--model", "models:/crystal-generator@champion", "--n", "40",
               "--reference", str(ref), "--w1-samples", "10", "--json", str(out),
               "--set", "generate.latent_prior=mixture", "--temperature", "0.9"])
    assert rc == 0
    assert "structural_validity" in capsys.readouterr().out
    result = json.loads(out.read_text())
    client = MlflowClient(tracking_uri=campaign["uri"])
    exp = client.get_experiment_by_name("crystal-benchmark")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    logged = runs[0].data
    assert logged.params["n"] == "40" and logged.params["model"] == "models:/crystal-generator@champion"
    assert logged.params["latent_prior"] == "mixture" and float(logged.params["temperature"]) == 0.9
    for key in ("structural_validity", "compositional_validity", "cov_recall", "w1_density",
                "sample_decode_check_per_s"):
        assert logged.metrics[key] == pytest.approx(result[key]), key
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"benchmark.json", "benchmark.txt"} <= names


def test_ablation_flow_trains_benchmarks_and_resumes(prefect_harness, tmp_path, monkeypatch):
    import yaml

    from design.data.sources import resolve
    from flows.ablation import ablation

    from testkit import tiny_config

    ref = tmp_path / "ref.csv.gz"
    pd.read_csv(resolve("crystals/mp_20_biternary/test.csv.gz"), nrows=16).to_csv(ref, index=False)
    base = tiny_config(output={"generator_cache": str(tmp_path / "generators")})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base.model_dump(mode="json")))
    spec = {"base": "base.yaml", "bench": {"n": 32, "w1_samples": 8, "reference": str(ref)},
            "variants": {"gan": {}, "vae_only": {"train": {"adv_weight": 0.0}}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ablation"
    result = ablation(str(tmp_path / "spec.yaml"), str(out), uri)
    assert list(result["results"]) == ["gan", "vae_only"]
    assert (out / "ablation.md").read_text().count("\n") == 4  # header, separator, two rows
    assert len(list((tmp_path / "generators").iterdir())) == 2  # two different generators trained
    from flows.train import cached_generator

    assert cached_generator(base) is not None  # variant "gan" is the base config under another name
    mtime = (out / "gan.json").stat().st_mtime_ns
    again = ablation(str(tmp_path / "spec.yaml"), str(out), uri)  # resumes: nothing recomputed
    assert (out / "gan.json").stat().st_mtime_ns == mtime
    for name in ("gan", "vae_only"):
        assert again["results"][name]["valid"] == result["results"][name]["valid"]
        assert again["results"][name]["cov_recall"] == result["results"][name]["cov_recall"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny-ablation").experiment_id])
    assert sorted(r.data.tags["variant"] for r in runs) == ["gan", "vae_only"]
