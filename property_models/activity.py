"""Molecular activity models: a GNN ensemble with an uncertainty, next to a fingerprint random forest.

Targets (:data:`TARGETS`): ``gsk3`` and ``jnk3`` (binary inhibitor labels, the TDC/GuacaMol kinase
sets) and ``bace`` (regression of pIC50). A target is a dict spec of the dataset path under the data
root, the label column and the task, ``"classification"`` or ``"regression"``.

**Split.** Bemis-Murcko scaffold split (RDKit ``MurckoScaffold``, generic atoms kept, chirality
dropped; acyclic molecules share the empty scaffold). Molecules are grouped by scaffold and the
groups are visited largest first (ties by scaffold SMILES, so the split does not depend on row
order); a group goes to train if it fits within ``(1 - test_fraction)`` of the molecules, otherwise to
test. So every scaffold is on one side only, train holds at most 80% by default, and the test side
is the rare scaffolds plus whichever mid-sized groups did not fit (the usual DeepChem / chemprop
convention). An inner validation split is carved out of train by the same rule on request.

**Graphs.** One node per heavy atom: element one-hot (C, N, O, S, F, Cl, Br, I, P, B, Si, Se, other),
degree 0-5, formal charge -1/0/+1 (clipped), aromatic, total H count 0-4, in ring; one edge per bond
direction: single / double / triple / aromatic, conjugated, in ring.

**Model.** Each member is a GINE network (edge-aware GIN convolutions with batch norm, residual
connections), mean and sum pooling concatenated, and an MLP head giving one logit (classification,
binary cross-entropy with ``pos_weight = (negatives / positives) ** balance``) or one standardised
value (regression, mean squared error). Members differ in their seed (initialisation and batch order)
and train a fixed number of epochs with Adam (no early stopping). The ensemble predicts the mean
probability (or value) and the members' standard deviation as the uncertainty.

**Baseline.** A random forest on Morgan fingerprints (radius 2, 2048 bits) trained on the same train
split. :func:`evaluate` reports, on the scaffold test split, ROC-AUC and PR-AUC (and the test set's
positive rate) for classification, Spearman and RMSE for regression, for both models, plus the
Spearman correlation between the ensemble spread and the absolute error (informative for regression;
for classification it mostly follows the predicted probability, since both shrink together on the
many confident negatives).

Saved files are ``torch.save`` dicts of tensors, numbers and strings that load with
``weights_only=True``: ``ActivityModel.load(path).predict(smiles) -> (mean, std)``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINEConv, global_add_pool, global_mean_pool

from design.data.sources import resolve
from design.utils import ensemble_blob, load_torch_file, save_torch_file
from property_models.adversarial import (
    AttackConfig,
    FeatureBox,
    adversarial_batch,
    check_training_method,
    robustness_curve,
)
from property_models.barriers import spearman

log = logging.getLogger(__name__)

FORMAT = "invdes-activity"
VERSION = 1
TASKS = ("classification", "regression")
TARGETS: dict[str, dict] = {
    "gsk3": {"path": "activity/gsk3/gsk3.csv.gz", "label": "gsk3", "task": "classification"},
    "jnk3": {"path": "activity/jnk3/jnk3.csv.gz", "label": "jnk3", "task": "classification"},
    "bace": {"path": "activity/bace/bace.csv", "label": "pIC50", "task": "regression"},
}

ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "B", "Si", "Se")
ATOM_DIM = len(ELEMENTS) + 1 + 6 + 3 + 1 + 5 + 1
BOND_DIM = 6


def target_spec(target: str) -> dict:
    """The spec of a named target; a ValueError naming the valid ones for anything else."""
    if target not in TARGETS:
        raise ValueError(f"unknown activity target {target!r}; valid targets: {', '.join(sorted(TARGETS))}")
    return dict(TARGETS[target])


# ----------------------------------------------------------------------------------------- data


@dataclass
class ActivityData:
    target: str
    task: str
    smiles: list[str]  # as read (valid rows only)
    mols: list  # RDKit Mol, parallel to smiles
    y: np.ndarray  # [N] float: 0/1 for classification
    skipped: dict[str, int] = field(default_factory=dict)


def read_activity(target: str, path: str | None = None) -> ActivityData:
    """The rows of ``target``'s table whose SMILES parse and whose label is usable.

    ``path`` overrides the spec's dataset path (relative to the data root, or absolute). Skipped rows
    are counted per reason (``smiles``: RDKit cannot parse it or it has no atoms; ``label``: missing,
    non-numeric, or not 0/1 for classification) and logged."""
    from rdkit import Chem, RDLogger

    spec = target_spec(target)
    relpath = path or spec["path"]
    df = pd.read_csv(resolve(relpath))
    missing = [c for c in ("smiles", spec["label"]) if c not in df]
    if missing:
        raise ValueError(f"{relpath} lacks columns {missing}; expected smiles and {spec['label']!r} for {target}")
    out = ActivityData(target, spec["task"], [], [], np.zeros(0), {"smiles": 0, "label": 0})
    labels = pd.to_numeric(df[spec["label"]], errors="coerce").to_numpy(dtype=float)
    ys = []
    RDLogger.DisableLog("rdApp.*")
    try:
        for smi, y in zip(df["smiles"], labels, strict=True):
            if not math.isfinite(y) or (spec["task"] == "classification" and y not in (0.0, 1.0)):
                out.skipped["label"] += 1
                continue
            mol = Chem.MolFromSmiles(str(smi)) if isinstance(smi, str) else None
            if mol is None or mol.GetNumAtoms() == 0:
                out.skipped["smiles"] += 1
                continue
            out.smiles.append(str(smi))
            out.mols.append(mol)
            ys.append(y)
    finally:
        RDLogger.EnableLog("rdApp.*")
    out.y = np.array(ys, dtype=float)
    if out.skipped["smiles"] or out.skipped["label"]:
        log.warning("%s: skipped rows %s (smiles: RDKit cannot parse; label: missing or invalid)",
                    relpath, out.skipped)
    return out


def scaffold(mol) -> str:
    """Bemis-Murcko scaffold SMILES of an RDKit Mol (empty string for an acyclic molecule)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def _assign(indices: list[int], keys: list[str], fraction: float) -> tuple[list[int], list[int]]:
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(keys[i], []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    cutoff = fraction * len(indices)
    first, second = [], []
    for _, members in ordered:
        (first if len(first) + len(members) <= cutoff else second).extend(members)
    return sorted(first), sorted(second)


@dataclass
class Split:
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray  # empty unless asked for


def scaffold_split(mols: list, test_fraction: float = 0.2, val_fraction: float = 0.0) -> Split:
    """Deterministic Bemis-Murcko scaffold split (see the module docstring for the convention).

    ``mols`` are RDKit Mols or SMILES. With ``val_fraction > 0`` a validation part of about that
    fraction of the *train* molecules is split off train by the same rule (no scaffold shared)."""
    from rdkit import Chem

    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1) and val_fraction={val_fraction} in [0, 1)")
    keys = [scaffold(Chem.MolFromSmiles(m) if isinstance(m, str) else m) for m in mols]
    train, test = _assign(list(range(len(keys))), keys, 1 - test_fraction)
    val: list[int] = []
    if val_fraction > 0:
        train, val = _assign(train, keys, 1 - val_fraction)
    return Split(np.array(train, dtype=int), np.array(test, dtype=int), np.array(val, dtype=int))


def _one_hot(value: int, n: int) -> list[float]:
    v = [0.0] * n
    v[min(max(value, 0), n - 1)] = 1.0
    return v


def mol_graph(mol) -> Data:
    """A torch-geometric graph of an RDKit Mol (features in the module docstring)."""
    from rdkit import Chem

    x = []
    for atom in mol.GetAtoms():
        sym = atom.GetSymbol()
        x.append(
            _one_hot(ELEMENTS.index(sym) if sym in ELEMENTS else len(ELEMENTS), len(ELEMENTS) + 1)
            + _one_hot(atom.GetDegree(), 6)
            + _one_hot(atom.GetFormalCharge() + 1, 3)
            + [float(atom.GetIsAromatic())]
            + _one_hot(atom.GetTotalNumHs(), 5)
            + [float(atom.IsInRing())]
        )
    kinds = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2, Chem.BondType.AROMATIC: 3}
    src, dst, attr = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        f = [0.0] * BOND_DIM
        f[kinds.get(bond.GetBondType(), 0)] = 1.0
        f[4], f[5] = float(bond.GetIsConjugated()), float(bond.IsInRing())
        src += [i, j]
        dst += [j, i]
        attr += [f, f]
    return Data(
        x=torch.tensor(x, dtype=torch.float32),
        edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        edge_attr=torch.tensor(attr, dtype=torch.float32).reshape(-1, BOND_DIM),
    )


def morgan_fingerprints(mols: list, radius: int = 2, bits: int = 2048) -> np.ndarray:
    """[N, bits] uint8 Morgan (ECFP-like) bit vectors."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    return np.stack([gen.GetFingerprintAsNumPy(m).astype(np.uint8) for m in mols]) if mols else np.zeros((0, bits), np.uint8)


# ---------------------------------------------------------------------------------------- model


@dataclass
class ActivityConfig:
    target: str = "gsk3"
    task: str = "classification"
    hidden: int = 64
    layers: int = 3
    dropout: float = 0.1
    members: int = 5
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    balance: float = 0.5  # pos_weight = (neg / pos) ** balance; 0 = plain BCE
    # adversarial training (property_models/adversarial.py): none, fgsm or pgd on the atom features
    # within an L-infinity box of adv_epsilon; loss = (1 - adv_weight) * clean + adv_weight * adversarial;
    # adv_separate_norms gives adversarial batches their own batch norms (AdvProp; the clean ones predict)
    adv_method: str = "none"
    adv_epsilon: float = 0.05
    adv_steps: int = 3
    adv_weight: float = 0.5
    adv_separate_norms: bool = False
    seed: int = 0

    def __post_init__(self):
        check_training_method(self.adv_method, self.adv_epsilon, self.adv_steps, self.adv_weight)
        for name in ("hidden", "layers", "members", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"activity {name}={v!r} must be an int >= 1")
        if self.task not in TASKS:
            raise ValueError(f"activity task={self.task!r} must be one of {TASKS}")
        if not self.lr > 0 or not 0 <= self.dropout < 1 or not self.balance >= 0:
            raise ValueError(f"lr={self.lr} must be > 0, dropout={self.dropout} in [0, 1), balance={self.balance} >= 0")


class MolGIN(nn.Module):
    """One ensemble member: linear atom embedding -> GINE x layers -> [mean, sum] pooling -> MLP -> 1."""

    def __init__(self, cfg: ActivityConfig):
        super().__init__()
        h = cfg.hidden
        self.embed = nn.Linear(ATOM_DIM, h)
        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h)), edge_dim=BOND_DIM)
            for _ in range(cfg.layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(h) for _ in range(cfg.layers))
        if cfg.adv_separate_norms:  # AdvProp: batch statistics of adversarial inputs kept apart
            self.adv_norms = nn.ModuleList(nn.BatchNorm1d(h) for _ in range(cfg.layers))
        self.head = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))

    def forward(self, data: Data, adversarial: bool = False) -> torch.Tensor:
        """[G] logits (classification) or standardised values; ``adversarial`` routes the batch
        through the auxiliary batch norms of an AdvProp model."""
        h = self.embed(data.x)
        norms = self.adv_norms if adversarial and hasattr(self, "adv_norms") else self.norms
        for conv, norm in zip(self.convs, norms, strict=True):
            h = h + torch.relu(norm(conv(h, data.edge_index, data.edge_attr)))
        batch = data.batch if getattr(data, "batch", None) is not None else torch.zeros(len(h), dtype=torch.long)
        pooled = torch.cat([global_mean_pool(h, batch), global_add_pool(h, batch)], dim=1)
        return self.head(pooled).squeeze(-1)


class ActivityModel:
    """The ensemble plus the target scaling; :meth:`predict` gives (mean, std) per SMILES."""

    def __init__(self, cfg: ActivityConfig, members: list[MolGIN], y_mean: float = 0.0, y_std: float = 1.0,
                 info: dict | None = None):
        self.cfg = cfg
        self.members = [m.eval() for m in members]
        self.y_mean = float(y_mean)
        self.y_std = float(y_std)
        self.info = info or {}

    @torch.no_grad()
    def member_predictions(self, graphs: list[Data], batch_size: int = 512) -> np.ndarray:
        """[M, N]: each member's probability (classification) or value in label units (regression)."""
        if not graphs:
            return np.zeros((len(self.members), 0))
        outs = []
        for m in self.members:
            raw = torch.cat([m(b) for b in DataLoader(graphs, batch_size=batch_size, shuffle=False)])
            outs.append(torch.sigmoid(raw) if self.cfg.task == "classification" else raw * self.y_std + self.y_mean)
        return torch.stack(outs).double().numpy()

    def predict_graphs(self, graphs: list[Data]) -> tuple[np.ndarray, np.ndarray]:
        p = self.member_predictions(graphs)
        return p.mean(0), p.std(0)

    def predict(self, smiles: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and member standard deviation per SMILES; NaN for one RDKit cannot parse."""
        from rdkit import Chem, RDLogger

        RDLogger.DisableLog("rdApp.*")
        try:
            mols = [Chem.MolFromSmiles(s) if isinstance(s, str) else None for s in smiles]
        finally:
            RDLogger.EnableLog("rdApp.*")
        ok = [i for i, m in enumerate(mols) if m is not None and m.GetNumAtoms() > 0]
        mean, std = np.full(len(smiles), np.nan), np.full(len(smiles), np.nan)
        if ok:
            mean[ok], std[ok] = self.predict_graphs([mol_graph(mols[i]) for i in ok])
        return mean, std

    def robustness(self, graphs: list[Data], y: np.ndarray, budgets: list[float], steps: int = 10,
                   seed: int = 0) -> dict:
        """:func:`metrics` of the ensemble on ``graphs`` whose atom features a PGD attack moves by up to
        each budget (L-infinity, feature units) to push the prediction away from the labels ``y``
        (see :func:`property_models.adversarial.robustness_curve`)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        scaled = (y - self.y_mean) / self.y_std if self.cfg.task == "regression" else y
        labelled = []
        for g, v in zip(graphs, scaled, strict=True):
            g = g.clone()
            g.y = torch.tensor([v], dtype=torch.float32)
            labelled.append(g)
        classify = self.cfg.task == "classification"

        def loss(out: torch.Tensor, batch: Data) -> torch.Tensor:
            if classify:
                return nn.functional.binary_cross_entropy_with_logits(out, batch.y)
            return nn.functional.mse_loss(out, batch.y)

        def predict(outs: list[torch.Tensor]) -> torch.Tensor:
            stack = torch.stack(outs)
            return (torch.sigmoid(stack) if classify else stack * self.y_std + self.y_mean).mean(0)

        def metric(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
            return {k: v for k, v in metrics(self.cfg.task, truth, pred).items() if k != "positive_rate"}

        return robustness_curve(self.members, loss, predict, labelled, y, metric, FeatureBox(), budgets, steps,
                                batch_size=512, seed=seed)

    def save(self, path: str | Path) -> Path:
        blob = ensemble_blob(FORMAT, VERSION, self.cfg, self.members, y_mean=self.y_mean, y_std=self.y_std,
                             info=self.info)
        return save_torch_file(blob, path)

    @classmethod
    def load(cls, path: str | Path) -> ActivityModel:
        hint = "retrain with `invdes activity`"
        blob = load_torch_file(path, FORMAT, "activity model", hint)
        try:
            cfg = ActivityConfig(**blob["config"])
            members = []
            for state in blob["members"]:
                m = MolGIN(cfg)
                m.load_state_dict(state)
                members.append(m)
            if not members:
                raise ValueError("no ensemble members")
            return cls(cfg, members, blob["y_mean"], blob["y_std"], blob.get("info", {}))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} is a damaged {FORMAT} file ({err}); {hint}") from None


def _fit_member(cfg: ActivityConfig, graphs: list[Data], seed: int, pos_weight: float | None,
                val: list[Data] | None) -> tuple[MolGIN, dict]:
    torch.manual_seed(seed)
    model = MolGIN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = DataLoader(graphs, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    if cfg.task == "classification":
        pw = torch.tensor(pos_weight if pos_weight is not None else 1.0)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw)
    else:
        loss_fn = nn.MSELoss()
    history, val_history = [], []
    attack_gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(cfg.epochs):
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            if batch.num_graphs < 2:  # batch norm needs two graphs; a lone leftover graph is dropped
                continue
            loss = loss_fn(model(batch), batch.y)
            if cfg.adv_method != "none":
                attack_cfg = AttackConfig(cfg.adv_method, cfg.adv_epsilon, cfg.adv_steps)
                adv = adversarial_batch(model, lambda out, b: loss_fn(out, b.y), batch, FeatureBox(), attack_cfg,
                                        attack_gen)
                adv_loss = loss_fn(model(adv, adversarial=True), adv.y)
                loss = (1 - cfg.adv_weight) * loss + cfg.adv_weight * adv_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += loss.item() * batch.num_graphs
            count += batch.num_graphs
        history.append(total / max(count, 1))
        if val:
            model.eval()
            with torch.no_grad():
                vl = sum(float(loss_fn(model(b), b.y)) * b.num_graphs for b in DataLoader(val, batch_size=512))
            val_history.append(vl / len(val))
    return model.eval(), {"train_loss": history, "val_loss": val_history}


def train_ensemble(cfg: ActivityConfig, graphs: list[Data], y: np.ndarray,
                   val: tuple[list[Data], np.ndarray] | None = None) -> ActivityModel:
    """Train ``cfg.members`` members on ``graphs`` with labels ``y`` (0/1, or values in label units).

    ``val`` (graphs, labels) is only monitored: its loss per epoch goes into ``info``."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) != len(graphs):
        raise ValueError(f"{len(graphs)} graphs but {len(y)} labels")
    if len(graphs) < 4:
        raise ValueError(f"{len(graphs)} training molecules are too few (need >= 4)")
    if not np.isfinite(y).all():
        raise ValueError("training labels must be finite")
    pos_weight = None
    if cfg.task == "classification":
        if not set(np.unique(y)) <= {0.0, 1.0}:
            raise ValueError("classification labels must be 0 or 1")
        pos, neg = float(y.sum()), float(len(y) - y.sum())
        if pos == 0 or neg == 0:
            raise ValueError("classification training set needs both classes")
        pos_weight = (neg / pos) ** cfg.balance
        y_mean, y_std = 0.0, 1.0
    else:
        y_mean, y_std = float(y.mean()), float(max(y.std(), 1e-6))

    def with_targets(gs: list[Data], ys: np.ndarray) -> list[Data]:
        scaled = (ys - y_mean) / y_std if cfg.task == "regression" else ys
        out = []
        for g, v in zip(gs, scaled, strict=True):
            g = g.clone()
            g.y = torch.tensor([v], dtype=torch.float32)
            out.append(g)
        return out

    train = with_targets(graphs, y)
    val_graphs = with_targets(val[0], np.asarray(val[1], dtype=np.float64)) if val else None
    start = time.perf_counter()
    members, stats = [], []
    for k in range(cfg.members):
        model, st = _fit_member(cfg, train, cfg.seed * 1000 + k, pos_weight, val_graphs)
        members.append(model)
        stats.append(st)
        log.info("activity %s member %d/%d: final train loss %.4f%s (%.0f s so far)", cfg.target, k + 1, cfg.members,
                 st["train_loss"][-1], f", val loss {st['val_loss'][-1]:.4f}" if st["val_loss"] else "",
                 time.perf_counter() - start)
    info = {"n_train": len(graphs), "pos_weight": pos_weight, "members": stats, "wall_s": time.perf_counter() - start}
    return ActivityModel(cfg, members, y_mean, y_std, info)


# ------------------------------------------------------------------------------------ evaluation


def random_forest(task: str, trees: int = 500, seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    if task == "classification":
        return RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
    return RandomForestRegressor(n_estimators=trees, max_features=0.33, random_state=seed, n_jobs=1)


def metrics(task: str, y: np.ndarray, pred: np.ndarray) -> dict:
    """ROC-AUC, PR-AUC and positive rate (classification) or Spearman and RMSE (regression)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, pred = np.asarray(y, float), np.asarray(pred, float)
    if task == "classification":
        both = 0 < y.sum() < len(y)
        return {"roc_auc": float(roc_auc_score(y, pred)) if both else math.nan,
                "pr_auc": float(average_precision_score(y, pred)) if both else math.nan,
                "positive_rate": float(y.mean()) if len(y) else math.nan}
    return {"spearman": spearman(y, pred), "rmse": float(np.sqrt(np.mean((y - pred) ** 2)))}


def evaluate(target: str, members: int = 5, epochs: int = 30, seed: int = 0, trees: int = 500,
             hidden: int = 64, layers: int = 3, test_fraction: float = 0.2, val_fraction: float = 0.0,
             out: str | Path | None = None, path: str | None = None) -> dict:
    """Scaffold-split evaluation of the GNN ensemble and the Morgan random forest on ``target``.

    Trains both on the train split, scores the test split, and saves the ensemble to ``out`` if given.
    ``val_fraction > 0`` holds a scaffold validation part out of train and records its loss per epoch."""
    spec = target_spec(target)
    t_start = t0 = time.perf_counter()
    data = read_activity(target, path)
    split = scaffold_split(data.mols, test_fraction, val_fraction)
    t_read = time.perf_counter() - t0
    if len(split.train) == 0 or len(split.test) == 0:
        raise ValueError(f"{target}: the scaffold split left an empty side ({len(split.train)} train, {len(split.test)} test)")
    t0 = time.perf_counter()
    graphs = [mol_graph(m) for m in data.mols]
    t_graphs = time.perf_counter() - t0
    cfg = ActivityConfig(target=target, task=spec["task"], hidden=hidden, layers=layers, members=members,
                         epochs=epochs, seed=seed)
    y = data.y
    log.info("activity %s: %d molecules (%d train, %d val, %d test), %d members x %d epochs", target, len(y),
             len(split.train), len(split.val), len(split.test), members, epochs)
    val = ([graphs[i] for i in split.val], y[split.val]) if len(split.val) else None
    model = train_ensemble(cfg, [graphs[i] for i in split.train], y[split.train], val)
    t0 = time.perf_counter()
    per_member = model.member_predictions([graphs[i] for i in split.test])
    t_pred = time.perf_counter() - t0
    mean, std = per_member.mean(0), per_member.std(0)
    y_test = y[split.test]
    gnn = metrics(spec["task"], y_test, mean)
    member_scores = [metrics(spec["task"], y_test, p) for p in per_member]
    main_metric = "roc_auc" if spec["task"] == "classification" else "spearman"
    gnn[f"member_{main_metric}_mean"] = float(np.mean([s[main_metric] for s in member_scores]))
    gnn["uncertainty_error_spearman"] = spearman(std, np.abs(y_test - mean))
    gnn.update(train_wall_s=model.info["wall_s"], predict_wall_s=t_pred)

    t0 = time.perf_counter()
    fps = morgan_fingerprints(data.mols)
    t_fp = time.perf_counter() - t0
    t0 = time.perf_counter()
    forest = random_forest(spec["task"], trees, seed).fit(fps[split.train], y[split.train])
    t_rf = time.perf_counter() - t0
    rf_pred = forest.predict_proba(fps[split.test])[:, 1] if spec["task"] == "classification" else forest.predict(fps[split.test])
    rf = metrics(spec["task"], y_test, rf_pred)
    rf.update(train_wall_s=t_rf, fingerprint_wall_s=t_fp)

    result = {
        "target": target, "task": spec["task"], "dataset": path or spec["path"], "label": spec["label"],
        "n": len(y), "skipped": data.skipped, "scaffolds": len({scaffold(m) for m in data.mols}),
        "split": {"method": "bemis-murcko scaffold, largest groups to train", "test_fraction": test_fraction,
                  "val_fraction": val_fraction, "n_train": len(split.train), "n_val": len(split.val),
                  "n_test": len(split.test),
                  "train_positive_rate": float(y[split.train].mean()) if spec["task"] == "classification" else None},
        "gnn": gnn, "rf": rf,
        "settings": {"gnn": {**asdict(cfg), "optimizer": "adam", "pos_weight": model.info["pos_weight"],
                             "features": f"{ATOM_DIM} atom / {BOND_DIM} bond"},
                     "rf": {"trees": trees, "fingerprint": "morgan r=2 2048 bits", "n_jobs": 1},
                     "torch_threads": torch.get_num_threads()},
        "wall_s": {"read_split": t_read, "graphs": t_graphs, "gnn_train": model.info["wall_s"], "gnn_predict": t_pred,
                   "fingerprints": t_fp, "rf_train": t_rf},
        "gnn_train_loss": [m["train_loss"] for m in model.info["members"]],
    }
    result["wall_s"]["total"] = time.perf_counter() - t_start
    if len(split.val):
        result["gnn_val_loss"] = [m["val_loss"] for m in model.info["members"]]
    if out is not None:
        model.info["evaluation"] = {k: result[k] for k in ("target", "n", "split", "gnn", "rf")}
        model.save(out)
        result["model_path"] = str(out)
    return result


def format_table(result: dict) -> str:
    """A small GNN-vs-RF text table of :func:`evaluate`'s result."""
    if result["task"] == "classification":
        cols = [("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc")]
    else:
        cols = [("Spearman", "spearman"), ("RMSE", "rmse")]
    s = result["split"]
    lines = [f"{result['target']} ({result['task']}): {result['n']} molecules, scaffold split "
             f"{s['n_train']} train / {s['n_test']} test"
             + (f", test positive rate {result['gnn']['positive_rate']:.3f}" if result["task"] == "classification" else ""),
             f"{'model':<28}" + "".join(f"{c:>10}" for c, _ in cols) + f"{'train s':>10}"]
    g = result["settings"]["gnn"]
    for name, row in ((f"GNN ensemble ({g['members']}x{g['epochs']} ep)", result["gnn"]),
                      (f"RF Morgan ({result['settings']['rf']['trees']} trees)", result["rf"])):
        lines.append(f"{name:<28}" + "".join(f"{row[k]:>10.3f}" for _, k in cols) + f"{row['train_wall_s']:>10.0f}")
    lines.append(f"ensemble spread vs |error| Spearman: {result['gnn']['uncertainty_error_spearman']:.3f}; "
                 f"total wall {result['wall_s']['total'] / 60:.1f} min")
    return "\n".join(lines)
