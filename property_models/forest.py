"""A random-forest regressor stored as plain arrays, so that it saves inside a torch file that loads
with ``weights_only=True`` (no pickled scikit-learn objects) and predicts with NumPy.

:meth:`ForestArrays.fit` trains scikit-learn's ``RandomForestRegressor`` and keeps, for all trees
together, each node's children (global indices; -1 for a leaf), split feature, threshold and leaf
value. :meth:`ForestArrays.predict` walks every (tree, sample) pair down its tree at once, one
level per step, and returns the mean over trees and their spread; the result equals scikit-learn's
``predict`` (the same trees, the same ``x <= threshold`` rule).
"""

from __future__ import annotations

import numpy as np
import torch

KEYS = ("left", "right", "feature", "threshold", "value", "roots")


class ForestArrays:
    def __init__(self, left: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 value: np.ndarray, roots: np.ndarray):
        self.left, self.right, self.feature = left.astype(np.int64), right.astype(np.int64), feature.astype(np.int64)
        self.threshold, self.value, self.roots = threshold.astype(np.float64), value.astype(np.float64), roots.astype(np.int64)
        if not (len(self.left) == len(self.right) == len(self.feature) == len(self.threshold) == len(self.value)):
            raise ValueError("forest arrays of different lengths: a damaged forest")
        if len(self.roots) == 0 or self.roots.max() >= len(self.left):
            raise ValueError("forest has no trees or a root outside its nodes: a damaged forest")

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, trees: int = 300, min_samples_leaf: int = 2,
            max_features: float = 0.33, seed: int = 0) -> ForestArrays:
        """Fit a scikit-learn forest on ``x`` [N, F], ``y`` [N] and keep its trees as arrays."""
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(n_estimators=trees, min_samples_leaf=min_samples_leaf,
                                       max_features=max_features, n_jobs=1, random_state=seed)
        forest.fit(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float64))
        parts: dict[str, list] = {k: [] for k in KEYS}
        offset = 0
        for est in forest.estimators_:
            t = est.tree_
            leaf = t.children_left == -1
            parts["left"].append(np.where(leaf, -1, t.children_left + offset))
            parts["right"].append(np.where(leaf, -1, t.children_right + offset))
            parts["feature"].append(np.where(leaf, 0, t.feature))
            parts["threshold"].append(t.threshold)
            parts["value"].append(t.value[:, 0, 0])
            parts["roots"].append(np.array([offset]))
            offset += t.node_count
        return cls(*(np.concatenate(parts[k]) for k in KEYS))

    @property
    def trees(self) -> int:
        return len(self.roots)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean [N] and standard deviation [N] over the trees' predictions for ``x`` [N, F]."""
        # trees learnt on float32 inputs: compare the same way scikit-learn does
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        if x.ndim != 2:
            raise ValueError(f"forest input must be [N, F], got shape {x.shape}")
        node = np.repeat(self.roots[:, None], len(x), axis=1)  # [T, N]
        rows = np.broadcast_to(np.arange(len(x))[None, :], node.shape)
        while True:
            inner = self.left[node] >= 0
            if not inner.any():
                break
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        per_tree = self.value[node]  # [T, N]
        return per_tree.mean(0), per_tree.std(0)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for a ``torch.save`` blob (weights_only-loadable)."""
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in KEYS}

    @classmethod
    def from_state(cls, state: dict) -> ForestArrays:
        missing = [k for k in KEYS if k not in state]
        if missing:
            raise ValueError(f"forest state lacks {missing}: a damaged forest")
        return cls(*(np.asarray(state[k]) for k in KEYS))
