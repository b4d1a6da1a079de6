"""Several processes start against the same new SQLite MLflow store at once: nothing is lost."""

import subprocess
import sys

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
