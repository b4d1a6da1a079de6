"""MLflow bookkeeping: where runs live, what a discovery run logs, and the model registry.

Default store: ``sqlite:///<absolute working directory>/mlflow.db`` with artifacts in
``<working directory>/mlartifacts``; ``MLFLOW_TRACKING_URI`` or ``tracking.uri`` override it.
Only the flow process calls these functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from design.utils import file_lock

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("generator_model.py")
MODEL_NAME_IN_RUN = "generator"


def tracking_uri(configured: str | None = None) -> str:
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _sqlite_lock(uri: str):
    """Hold an exclusive lock file beside an SQLite store while it is opened: the first opening
    creates and migrates its tables, and two processes doing that at once collide ("duplicate
    column name"). Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    with file_lock(db.with_name(db.name + ".lock")):
        yield


def setup(configured_uri: str | None, experiment: str) -> str:
    """Point MLflow at the store and return the experiment id (created if new). Safe when several
    runs start against the same new SQLite store at once (see :func:`_sqlite_lock`)."""
    import mlflow

    uri = tracking_uri(configured_uri)
    mlflow.set_tracking_uri(uri)
    with _sqlite_lock(uri):
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        artifact_location = None
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :])
            artifact_location = (db.parent / "mlartifacts").resolve().as_uri()
        return mlflow.create_experiment(experiment, artifact_location=artifact_location)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def finite_metrics(metrics: dict) -> dict[str, float]:
    """The entries of ``metrics`` that are finite numbers (MLflow rejects NaN and non-numbers)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def log_metrics_series(rows: Iterable[dict[str, float]], step_key: str, prefix: str = "") -> None:
    """Log each row's numbers at step ``row[step_key]`` (one batch call per row)."""
    import mlflow

    for row in rows:
        step = int(row[step_key])
        metrics = {f"{prefix}{k}": v for k, v in finite_metrics(row).items() if k != step_key}
        mlflow.log_metrics(metrics, step=step)


def log_candidates(ranked: pd.DataFrame, out_dir: Path, top_dir: Path | None) -> None:
    """The ranked table as an MLflow table (shown in the UI) and CSV, plus the top structure files."""
    import mlflow

    mlflow.log_table(data=ranked, artifact_file="candidates/ranked_candidates.json")
    mlflow.log_artifact(str(out_dir / "ranked.csv"), artifact_path="candidates")
    if top_dir is not None and top_dir.is_dir() and any(top_dir.iterdir()):
        mlflow.log_artifacts(str(top_dir), artifact_path="candidates/top")


def log_campaign_end(out_dir: Path, result: dict) -> None:
    """A closed or goal-directed campaign's end: its numbers as ``final/*`` metrics (nested dicts
    flattened one level), its tables, the per-round verified or scored tables and the figures."""
    import mlflow

    flat = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update({f"final/{key}_{k}": v for k, v in value.items()})
        else:
            flat[f"final/{key}"] = value
    mlflow.log_metrics(finite_metrics(flat))
    for name in ("enrichment.json", "enrichment_top.csv", "enrichment_baseline.csv", "stability_reference.json"):
        if (out_dir / name).is_file():
            mlflow.log_artifact(str(out_dir / name), artifact_path="closed_loop")
    for path in sorted(out_dir.glob("round_*/verified.csv.gz")):
        mlflow.log_artifact(str(path), artifact_path=f"closed_loop/{path.parent.name}")
    for name in ("goal.json", "goal_top.csv", "goal_baseline.csv", "seed_actives.csv"):
        if (out_dir / name).is_file():
            mlflow.log_artifact(str(out_dir / name), artifact_path="goal")
    if (out_dir / "plots").is_dir():
        mlflow.log_artifacts(str(out_dir / "plots"), artifact_path="plots")


def register_generator(checkpoint: Path, registered_name: str, alias: str, tags: dict[str, str] | None = None) -> str:
    """Log the generator as a models-from-code pyfunc in the active run, register it, set ``alias``.

    Returns the new registered model version.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed")]),
        outputs=Schema([ColSpec("string", "id"), ColSpec("string", "structure")]),
    )
    with _sqlite_lock(mlflow.get_tracking_uri()):  # two campaigns registering at once get distinct versions
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            signature=signature,
            pip_requirements=_requirements(),
            registered_model_name=registered_name,
        )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(registered_name, alias, version)
        for k, v in (tags or {}).items():
            client.set_model_version_tag(registered_name, version, k, v)
    log.info("registered %s version %s as @%s", registered_name, version, alias)
    return version


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("invdes", "torch", "pymatgen", "ase", "smact", "rdkit", "selfies", "mlflow", "pandas"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


def download_generator_checkpoint(uri: str, tracking: str | None = None) -> Path:
    """Fetch a logged generator (``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/generator``)
    and return the path of its checkpoint."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri(tracking))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as err:
        raise ValueError(
            f"cannot resolve model URI {uri!r} in the MLflow store {mlflow.get_tracking_uri()} "
            f"({err.message.splitlines()[0] if err.message else err}); run `invdes discover` first, "
            "or set MLFLOW_TRACKING_URI to the store that holds it"
        ) from None
    found = sorted(local.rglob("artifacts/*.pt")) or sorted(local.rglob("*.pt"))
    if not found:
        raise ValueError(f"model {uri!r} has no checkpoint artifact; it was not logged by invdes")
    return found[0]
