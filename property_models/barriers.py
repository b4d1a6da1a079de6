"""The BVSE-barrier surrogate: from the labels table to a trained, evaluated ensemble.

* Rows: structures the oracle labelled (``ok``); a barrier above the oracle's ``encut`` (stored as
  ``inf``: no percolating path below it) is *censored* at ``encut``, so it keeps its place as the
  worst rank instead of being dropped.
* Split: by reduced formula (all polymorphs and duplicates of a composition on one side), 20% of
  the formulas held out, seeded. With a few hundred labels one split's Spearman moves by +-0.05
  with the seed, so the evaluation repeats the split (``splits`` seeds) and reports each split and
  their mean and standard deviation.
* Metrics on the held-out set, per target: Spearman rank correlation and MAE (eV) of the ensemble
  mean, the Spearman correlation of the ensemble's uncertainty with its absolute error, and the
  same for two baselines trained on the same split: the training mean of the structure's elements
  (composition only) and a random forest on the Li-environment descriptors alone
  (:mod:`property_models.descriptors`, log target), which shows what the graph network adds; and
  the geometric mean of the ensemble's and the forest's predictions (``_blend``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from scipy.stats import spearmanr
from torch_geometric.data import Data

from property_models.labels import oracle_cap, read_labels
from property_models.surrogate import SurrogateConfig, SurrogateEnsemble, blend, graphs_for, train_ensemble

log = logging.getLogger(__name__)


def load_labelled(path: str | Path, targets: list[str], cap: float | None = None) -> pd.DataFrame:
    """Labelled rows with their structures (column ``structure``) and censored targets."""
    df = read_labels(path)
    df = df[df["ok"].astype(bool)].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{path} has no successfully labelled rows; run `invdes label bvse` first")
    if cap is None:
        cap = oracle_cap(path)
    for t in targets:
        if t not in df.columns:
            raise ValueError(f"target {t!r} is not a column of {path}; choose from e_1d, e_2d, e_3d")
        df[t] = df[t].astype(float).clip(upper=cap)
    df["structure"] = [Structure.from_str(c, fmt="cif") for c in df["cif"]]
    df.attrs["cap"] = cap
    return df


def group_split(groups: list[str], test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), whole groups on one side; about ``test_fraction`` of the groups held out."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(uniq, size=max(1, int(round(test_fraction * len(uniq)))), replace=False).tolist())
    test = np.array([i for i, g in enumerate(groups) if g in held], dtype=int)
    train = np.array([i for i, g in enumerate(groups) if g not in held], dtype=int)
    return train, test


def element_mean_baseline(train: list[Structure], y_train: np.ndarray, test: list[Structure]) -> np.ndarray:
    """Per structure: the mean, over its elements, of the mean target of training structures with that element."""
    y_train = np.asarray(y_train, dtype=float).reshape(len(train), -1)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s, y in zip(train, y_train, strict=True):
        for el in {e.symbol for e in s.composition.elements}:
            sums[el] = sums.get(el, 0) + y
            counts[el] = counts.get(el, 0) + 1
    overall = y_train.mean(0)
    out = []
    for s in test:
        vals = [sums[e] / counts[e] for e in {e.symbol for e in s.composition.elements} if e in counts]
        out.append(np.mean(vals, axis=0) if vals else overall)
    return np.array(out)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN for fewer than 3 points or a constant input."""
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def metrics(y_true: np.ndarray, y_pred: np.ndarray, y_std: np.ndarray | None, targets: list[str],
            baseline: np.ndarray | None = None) -> dict:
    out: dict = {}
    for j, t in enumerate(targets):
        yt, yp = y_true[:, j], y_pred[:, j]
        out[f"{t}_spearman"] = spearman(yt, yp)
        out[f"{t}_mae"] = float(np.abs(yt - yp).mean())
        if y_std is not None:
            out[f"{t}_uncertainty_error_spearman"] = spearman(y_std[:, j], np.abs(yt - yp))
        if baseline is not None:
            out[f"{t}_baseline_spearman"] = spearman(yt, baseline[:, j])
            out[f"{t}_baseline_mae"] = float(np.abs(yt - baseline[:, j]).mean())
    return out


def descriptor_forest_baseline(train: list[Data], y_train: np.ndarray, test: list[Data], seed: int = 0) -> np.ndarray:
    """Random-forest predictions from the graphs' Li-environment descriptors alone (log of the
    positive targets, one forest of 300 trees per column)."""
    from property_models.surrogate import fit_forests, predict_forests

    cfg = SurrogateConfig(targets=[f"t{j}" for j in range(np.asarray(y_train).reshape(len(train), -1).shape[1])],
                          forest_trees=300, seed=seed)
    return predict_forests(cfg, fit_forests(cfg, train, y_train, log=True), test, log=True)


def even_blend(ensemble: np.ndarray, forest: np.ndarray) -> np.ndarray:
    """The geometric mean of the ensemble's and the descriptor forest's predictions (what an ensemble
    trained with ``forest_weight`` 0.5 would predict; both learn log barriers)."""
    return blend(SurrogateConfig(forest_weight=0.5, log_target=True), ensemble, forest)


def _evaluate_split(df: pd.DataFrame, graphs: list[Data], y: np.ndarray, cfg: SurrogateConfig, test_fraction: float,
                    seed: int) -> tuple[SurrogateEnsemble, dict]:
    train_idx, test_idx = group_split(df["formula"].tolist(), test_fraction, seed)
    split_cfg = dataclasses.replace(cfg, seed=seed)
    ens = train_ensemble(split_cfg, [graphs[i] for i in train_idx], y[train_idx])
    pred = ens.predict([graphs[i] for i in test_idx])
    structures = df["structure"].tolist()
    base = element_mean_baseline([structures[i] for i in train_idx], y[train_idx], [structures[i] for i in test_idx])
    forest = descriptor_forest_baseline([graphs[i] for i in train_idx], y[train_idx], [graphs[i] for i in test_idx], seed)
    result = {
        "seed": seed,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "test_formulas": int(df.loc[test_idx, "formula"].nunique()),
        "censored_fraction_test": {t: float((y[test_idx, j] >= df.attrs["cap"]).mean()) for j, t in enumerate(cfg.targets)},
        **metrics(y[test_idx], pred.mean, pred.std, cfg.targets, base),
        **{f"{k}_forest": v for k, v in metrics(y[test_idx], forest, None, cfg.targets).items()},
        **{f"{k}_blend": v for k, v in metrics(y[test_idx], even_blend(pred.mean, forest), None,
                                               cfg.targets).items()},
        "train_wall_s": ens.info["wall_s"],
    }
    return ens, result


def train_and_evaluate(labels: str | Path, cfg: SurrogateConfig, test_fraction: float = 0.2,
                       out: str | Path | None = None, splits: int = 1) -> tuple[SurrogateEnsemble, dict]:
    """Held-out evaluation on ``splits`` seeded formula splits (seeds ``cfg.seed``, ``cfg.seed + 1``,
    ...): per split, the ensemble trained on the rest and both baselines; then the mean and standard
    deviation of every metric over the splits. With ``out``, the first split's ensemble is saved
    there (its held-out metrics in its ``info``)."""
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits={splits!r} must be an int >= 1")
    df = load_labelled(labels, cfg.targets)
    graphs = graphs_for(cfg, df["structure"].tolist())
    y = df[cfg.targets].to_numpy(dtype=np.float32)
    first, per_split = None, []
    for k in range(splits):
        ens, res = _evaluate_split(df, graphs, y, cfg, test_fraction, cfg.seed + k)
        log.info("split %d/%d: %s", k + 1, splits,
                 ", ".join(f"{key} {val:.3f}" for key, val in res.items() if key.endswith(("_spearman", "_mae"))))
        first = first or ens
        per_split.append(res)
    summary = {}
    for key, val in per_split[0].items():
        if isinstance(val, float) and key != "train_wall_s":
            vals = np.array([r[key] for r in per_split], dtype=float)
            vals = vals[np.isfinite(vals)]  # a split can leave a metric undefined (e.g. one member: no spread)
            summary[key] = float(vals.mean()) if len(vals) else float("nan")
            summary[f"{key}_sd"] = float(vals.std()) if len(vals) else float("nan")
    result = {
        "labels": str(labels),
        "n_labelled": len(df),
        "cap_ev": df.attrs["cap"],
        "test_fraction": test_fraction,
        "splits": splits,
        **summary,
        "per_split": per_split,
        "train_wall_s": float(sum(r["train_wall_s"] for r in per_split)),
        "config": {k: v for k, v in vars(cfg).items()},
    }
    if out is not None:
        first.info["evaluation"] = {**{k: v for k, v in result.items() if k not in ("config", "per_split")},
                                    "first_split": per_split[0]}
        first.save(out)
    return first, result
