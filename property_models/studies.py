"""The two domains of the exploitation study (:mod:`property_models.exploitation`).

* :class:`CrystalStudy`: the BVSE-barrier surrogate ensemble (:mod:`property_models.surrogate`)
  trained on the oracle labels with 20% of the formulas held out; attacks displace atoms
  (Angstrom). The judge is the BVSE oracle itself (barrier censored at its cap; a structure it cannot
  evaluate is skipped in rank order); a hit is a barrier below the ``hit_quantile`` quantile of the
  labelled training crystals (the closed loop's hit rule). The ranking minimises the barrier.
* :class:`MoleculeStudy`: the activity GNN ensemble (:mod:`property_models.activity`) on a scaffold
  split; attacks move atom features. The judge is a model of another family trained on the same
  training labels: the Morgan-fingerprint random forest. A hit is a judged probability >= 0.5
  (classification) or a judged value >= the 90th percentile of the training labels (regression).
  The ranking maximises the predicted activity.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from design.generation.tables import TEXT_COLUMN
from property_models.exploitation import replace_config

log = logging.getLogger(__name__)


class CrystalStudy:
    name = "crystal"
    goal = "minimize"
    main_metric = "spearman"

    def __init__(self, labels: str | Path, cfg, train_relpath: str, hit_quantile: float = 0.1,
                 test_fraction: float = 0.2, split_seed: int = 0, workers: int = 1, time_limit_s: float = 60.0):
        from design.data.sources import cache_dir
        from property_models.barriers import group_split, load_labelled
        from property_models.bvse import BVSEOracle, BVSESettings
        from property_models.campaign import hit_threshold
        from property_models.labels import oracle_cap
        from property_models.surrogate import graphs_for

        self.labels, self.cfg = str(labels), cfg
        self.cap = oracle_cap(labels)
        df = load_labelled(labels, cfg.targets, self.cap)
        graphs = graphs_for(cfg, df["structure"].tolist())
        y = df[cfg.targets].to_numpy(dtype=np.float32)
        train, test = group_split(df["formula"].tolist(), test_fraction, split_seed)
        self.train_graphs, self.y_train = [graphs[i] for i in train], y[train]
        self.test_graphs, self.y_test = [graphs[i] for i in test], y[test]
        self.threshold = hit_threshold(labels, train_relpath, cfg.targets[0], hit_quantile)
        self.oracle = BVSEOracle(cache_dir() / "bvse", BVSESettings(time_limit_s=time_limit_s), workers=workers)
        self._pool_graphs: dict[str, object] = {}
        self._info = {"labels": self.labels, "target": cfg.targets[0], "n_train": len(train), "n_test": len(test),
                      "split": f"formula groups, {test_fraction:g} held out, seed {split_seed}",
                      "hit_quantile": hit_quantile, "train_relpath": train_relpath,
                      "model": {k: v for k, v in vars(cfg).items() if not k.startswith("adv_")},
                      "judge": "BVSE oracle (bvlain), barrier censored at the cap"}

    def train(self, overrides: dict):
        from property_models.surrogate import train_ensemble

        return train_ensemble(replace_config(self.cfg, overrides), self.train_graphs, self.y_train)

    def save(self, model, path: Path) -> None:
        model.save(path)

    def load(self, path: Path):
        from property_models.surrogate import SurrogateEnsemble

        return SurrogateEnsemble.load(path, self.cfg.device)

    def robustness(self, model, budgets: list[float], steps: int) -> dict:
        from property_models.surrogate import robustness

        return robustness(model, self.test_graphs, self.y_test[:, 0], budgets, steps, seed=self.cfg.seed)

    def predict(self, model, pool: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        from pymatgen.core import Structure

        from property_models.surrogate import graphs_for

        missing = [i for i in pool["id"] if i not in self._pool_graphs]
        if missing:
            text = dict(zip(pool["id"], pool[TEXT_COLUMN], strict=True))
            structures = [Structure.from_str(text[i], fmt="cif") for i in missing]
            self._pool_graphs.update(zip(missing, graphs_for(self.cfg, structures), strict=True))
        pred = model.predict([self._pool_graphs[i] for i in pool["id"]])
        return pred.mean[:, 0], pred.std[:, 0]

    def judge(self, pool: pd.DataFrame) -> pd.DataFrame:
        from pymatgen.core import Structure

        res = self.oracle.evaluate([Structure.from_str(t, fmt="cif") for t in pool[TEXT_COLUMN]], label="BVSE judge",
                                   every=max(len(pool), 1))
        target = self.cfg.targets[0]
        values = [min(getattr(r, target), self.cap) if r.ok else math.nan for r in res]
        return pd.DataFrame({"id": pool["id"].astype(str), "judged": values,
                             "failure": [r.failure or "" for r in res]})

    def describe(self) -> dict:
        return dict(self._info)


class MoleculeStudy:
    name = "molecule"
    goal = "maximize"

    def __init__(self, cfg, trees: int = 300, test_fraction: float = 0.2, eval_samples: int | None = None,
                 seed: int = 0):
        from property_models.activity import (
            metrics,
            mol_graph,
            morgan_fingerprints,
            read_activity,
            scaffold_split,
        )

        self.cfg, self.trees, self.seed = cfg, trees, seed
        data = read_activity(cfg.target)
        split = scaffold_split(data.mols, test_fraction)
        graphs = [mol_graph(m) for m in data.mols]
        self.train_graphs, self.y_train = [graphs[i] for i in split.train], data.y[split.train]
        test = split.test
        if eval_samples is not None and eval_samples < len(test):  # a seeded subset for the attacks
            test = np.sort(np.random.default_rng(seed).choice(test, size=eval_samples, replace=False))
        self.test_graphs, self.y_test = [graphs[i] for i in test], data.y[test]
        self.classification = cfg.task == "classification"
        self.main_metric = "roc_auc" if self.classification else "spearman"
        self.threshold = 0.5 if self.classification else float(np.quantile(self.y_train, 0.9))
        fps = morgan_fingerprints(data.mols)
        self._forest = self._fit_forest(fps[split.train], data.y[split.train])
        judge_test = self._forest_predict(fps[split.test])
        self._info = {"target": cfg.target, "task": cfg.task, "n_train": len(split.train),
                      "n_test": len(split.test), "n_attacked": len(test), "split": "bemis-murcko scaffold",
                      "model": {k: v for k, v in vars(cfg).items() if not k.startswith("adv_")},
                      "judge": f"random forest on Morgan fingerprints (r=2, 2048 bits, {trees} trees), same train split",
                      "judge_test_metrics": metrics(cfg.task, data.y[split.test], judge_test)}

    def _fit_forest(self, x: np.ndarray, y: np.ndarray):
        from property_models.activity import random_forest

        return random_forest(self.cfg.task, self.trees, self.seed).fit(x, y)

    def _forest_predict(self, x: np.ndarray) -> np.ndarray:
        return self._forest.predict_proba(x)[:, 1] if self.classification else self._forest.predict(x)

    def train(self, overrides: dict):
        from property_models.activity import train_ensemble

        return train_ensemble(replace_config(self.cfg, overrides), self.train_graphs, self.y_train)

    def save(self, model, path: Path) -> None:
        model.save(path)

    def load(self, path: Path):
        from property_models.activity import ActivityModel

        return ActivityModel.load(path)

    def robustness(self, model, budgets: list[float], steps: int) -> dict:
        return model.robustness(self.test_graphs, self.y_test, budgets, steps, seed=self.seed)

    def predict(self, model, pool: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return model.predict(pool[TEXT_COLUMN].tolist())

    def judge(self, pool: pd.DataFrame) -> pd.DataFrame:
        from rdkit import Chem

        from property_models.activity import morgan_fingerprints

        mols = [Chem.MolFromSmiles(s) if isinstance(s, str) else None for s in pool[TEXT_COLUMN]]
        ok = [i for i, m in enumerate(mols) if m is not None]
        values = np.full(len(pool), np.nan)
        if ok:
            values[ok] = self._forest_predict(morgan_fingerprints([mols[i] for i in ok]))
        return pd.DataFrame({"id": pool["id"].astype(str), "judged": values,
                             "failure": ["" if m is not None else "smiles" for m in mols]})

    def describe(self) -> dict:
        return dict(self._info)
