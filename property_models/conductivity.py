"""Measured room-temperature Li-ion conductivity (OBELiX) from composition, with an uncertainty.

Most OBELiX entries have partially occupied sites (their CIFs are disordered, and half have no CIF),
so this model reads the *true composition* (fractional amounts, e.g. ``Li6.4La3Zr1.4Ta0.6O12``):
Magpie element-property statistics (132 numbers, matminer) plus the Li fraction and the number of
elements, into a random forest whose per-tree spread is the uncertainty.

Target: log10 of the conductivity in S/cm. A value written ``<1E-10`` is below the detection
limit; it is *censored* at log10 = -10 (its bound, the most it can be) and flagged, and the metrics
are reported both on all rows and on the uncensored ones.

Evaluation: K-fold cross-validation grouped by reduced composition (all measurements of one
composition in the same fold), reporting Spearman rank correlation and MAE of the out-of-fold
predictions, next to a baseline that predicts the mean of the training rows of the same structural
family (OBELiX's ``Family`` column; the overall mean for an unseen family).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from design.data.sources import resolve
from property_models.barriers import spearman

log = logging.getLogger(__name__)

OBELIX = "conductivity/obelix/train.csv"
CONDUCTIVITY = "Ionic conductivity (S cm-1)"
DETECTION_LIMIT_LOG10 = -10.0


@dataclass
class ConductivityData:
    ids: list[str]
    compositions: list  # pymatgen Composition, fractional amounts
    log10_sigma: np.ndarray  # [N]
    censored: np.ndarray  # [N] bool: "<1E-10" rows
    groups: list[str]  # reduced formula
    family: list[str]
    skipped: dict[str, int]


def parse_conductivity(text: object) -> tuple[float, bool]:
    """``(log10 sigma, censored)`` of an OBELiX conductivity cell; NaN for an unreadable one."""
    s = str(text).strip()
    censored = s.startswith("<")
    try:
        value = float(s.lstrip("<").strip())
    except ValueError:
        return math.nan, False
    if not value > 0 or not math.isfinite(value):
        return math.nan, False
    return (min(math.log10(value), DETECTION_LIMIT_LOG10) if censored else math.log10(value)), censored


def load_obelix(relpath: str = OBELIX) -> ConductivityData:
    """The OBELiX rows with a readable composition and conductivity (others counted in ``skipped``)."""
    from pymatgen.core import Composition

    df = pd.read_csv(resolve(relpath))
    missing = [c for c in ("ID", "True Composition", "Reduced Composition", CONDUCTIVITY, "Family") if c not in df]
    if missing:
        raise ValueError(f"{relpath} lacks columns {missing}; it is not the OBELiX table")
    out = ConductivityData([], [], np.zeros(0), np.zeros(0, bool), [], [], {"composition": 0, "conductivity": 0})
    ys, cens = [], []
    for rid, formula, sigma, family in zip(df["ID"], df["True Composition"], df[CONDUCTIVITY], df["Family"], strict=True):
        y, c = parse_conductivity(sigma)
        try:
            comp = Composition(str(formula))
        except Exception:  # noqa: BLE001 - pymatgen raises several types for bad formulas
            out.skipped["composition"] += 1
            continue
        if not math.isfinite(y):
            out.skipped["conductivity"] += 1
            continue
        out.ids.append(str(rid))
        out.compositions.append(comp)
        out.groups.append(comp.reduced_formula)
        out.family.append(str(family))
        ys.append(y)
        cens.append(c)
    out.log10_sigma, out.censored = np.array(ys), np.array(cens, dtype=bool)
    if out.skipped["composition"] or out.skipped["conductivity"]:
        log.warning("%s: skipped rows %s", relpath, out.skipped)
    return out


def features(compositions: list) -> np.ndarray:
    """[N, 134] Magpie statistics, Li atomic fraction and number of elements."""
    from design.metrics.crystal import composition_features

    x = np.array([np.concatenate([composition_features(c), [c.get_atomic_fraction("Li"), len(c.elements)]])
                  for c in compositions])
    return np.nan_to_num(x, nan=0.0)


class ConductivityModel:
    """A random forest on composition features; ``predict`` gives the mean and the per-tree spread."""

    def __init__(self, trees: int = 300, seed: int = 0):
        from sklearn.ensemble import RandomForestRegressor

        self.forest = RandomForestRegressor(n_estimators=trees, min_samples_leaf=2, max_features=0.33,
                                            random_state=seed, n_jobs=1)

    def fit(self, x: np.ndarray, y: np.ndarray) -> ConductivityModel:
        self.forest.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_tree = np.stack([t.predict(x) for t in self.forest.estimators_])
        return per_tree.mean(0), per_tree.std(0)


def family_baseline(train_family: list[str], y_train: np.ndarray, test_family: list[str]) -> np.ndarray:
    means = pd.Series(y_train).groupby(pd.Series(train_family)).mean().to_dict()
    overall = float(np.mean(y_train))
    return np.array([means.get(f, overall) for f in test_family])


def cross_validate(data: ConductivityData, folds: int = 5, seed: int = 0, trees: int = 300,
                   group_by: str = "composition") -> dict:
    """Grouped K-fold cross-validation (see module docstring); out-of-fold metrics and per-fold ones.

    ``group_by="family"`` holds out whole structural families instead (a harsher test: doping series
    of one parent compound never straddle folds)."""
    from sklearn.model_selection import GroupKFold

    if folds < 2:
        raise ValueError(f"folds={folds} must be >= 2")
    if group_by not in ("composition", "family"):
        raise ValueError(f"group_by={group_by!r} must be 'composition' or 'family'")
    x, y = features(data.compositions), data.log10_sigma
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))  # GroupKFold is deterministic in group order: shuffle rows first
    x, y = x[order], y[order]
    keys = data.groups if group_by == "composition" else data.family
    groups = [keys[i] for i in order]
    family = [data.family[i] for i in order]
    censored = data.censored[order]
    pred, spread, base = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y))
    per_fold = []
    for k, (tr, te) in enumerate(GroupKFold(n_splits=folds).split(x, y, groups)):
        model = ConductivityModel(trees, seed + k).fit(x[tr], y[tr])
        pred[te], spread[te] = model.predict(x[te])
        base[te] = family_baseline([family[i] for i in tr], y[tr], [family[i] for i in te])
        per_fold.append({"fold": k, "n_test": len(te), "spearman": spearman(y[te], pred[te]),
                         "mae": float(np.abs(y[te] - pred[te]).mean())})
    unc = ~censored
    return {
        "n": len(y), "censored": int(censored.sum()), "folds": folds, "group_by": group_by,
        "groups": len(set(groups)),
        "spearman": spearman(y, pred), "mae_log10": float(np.abs(y - pred).mean()),
        "spearman_uncensored": spearman(y[unc], pred[unc]),
        "mae_log10_uncensored": float(np.abs(y[unc] - pred[unc]).mean()),
        "baseline_family_spearman": spearman(y, base), "baseline_family_mae_log10": float(np.abs(y - base).mean()),
        "uncertainty_error_spearman": spearman(spread, np.abs(y - pred)),
        "per_fold": per_fold, "skipped": data.skipped,
    }
