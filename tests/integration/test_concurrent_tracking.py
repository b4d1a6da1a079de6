"""Several processes at once against the same new SQLite MLflow store, data cache, generator
cache and Prefect home: nothing is lost and nothing is computed twice."""

import json
import os
import subprocess
import sys

import yaml

WORKER = """
import sys, mlflow
from design.tracking import store
uri, tag = sys.argv[1], sys.argv[2]
exp = store.setup(uri, "concurrent")
with mlflow.start_run(experiment_id=exp, run_name=tag):
    mlflow.log_params({f"p{i}": i for i in range(20)})
    for step in range(100):
        mlflow.log_metrics({"a": step, "b": 2.0 * step}, step=step)
    mlflow.log_text(tag * 100, "note.txt")
"""


def test_three_processes_share_a_new_sqlite_store(tmp_path):
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, uri, tag], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for tag in ("A", "B", "C")
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["A", "B", "C"]
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "a")) == 100
        assert len(r.data.params) == 20


def test_two_discover_runs_at_once_both_finish_with_all_their_data(tmp_path):
    """Two `invdes discover` processes started together on one config: a fresh Prefect home (whose
    database both would migrate), one MLflow store, one data cache, one generator cache (the
    generator trains once; the other run waits and reuses it)."""
    from testkit import tiny_config

    rounds = 2
    cfg = tiny_config(train={"epochs": 4}, generate={"rounds": rounds, "n_per_round": 16})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), MLFLOW_TRACKING_URI=uri,
               INVDES_DATA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("PREFECT_API_URL", None)
    procs = [
        subprocess.Popen([sys.executable, "-m", "flows.cli", "discover", "--config", "tiny.yaml", "--out", out],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for out in ("a", "b")
    ]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(log[-3000:] for log in logs)
    assert sum("training data:" in log for log in logs) == 1, "the shared generator must train once"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for out in ("a", "b"):
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        run = client.get_run(summary["run_id"])
        hist = client.get_metric_history(run.info.run_id, "round/generated")
        assert [m.step for m in hist] == list(range(rounds))
        assert run.data.params["train.epochs"] == "4"
        assert summary["ranked"] > 0
        assert len((tmp_path / out / "ranked.csv").read_text().splitlines()) == summary["ranked"] + 1
    versions = client.search_model_versions(f"name='{cfg.tracking.registered_model}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
