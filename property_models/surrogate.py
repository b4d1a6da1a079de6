"""A deep-ensemble periodic graph network that predicts properties of crystal structures.

Each member is a crystal graph network (torch-geometric ``CGConv`` layers over the periodic radius
graph of :mod:`property_models.graphs`, Gaussian radial features of the distances). A structure's
embedding is the mean over all sites concatenated with the mean over the sites of the *mobile*
element (Li by default; the global mean where there is none) and, with ``descriptors``, the
standardised Li-environment descriptors of :mod:`property_models.descriptors`, read out by an MLP.
Members differ in their initialisation and batch order; the ensemble predicts their mean and, as
its uncertainty, their standard deviation (Lakshminarayanan et al., 2017). With ``forest_weight``
the ensemble also holds a random forest on the descriptors alone (:mod:`property_models.forest`)
and predicts the weighted geometric mean (arithmetic without ``log_target``) of the members' mean
and the forest; the uncertainty stays the members' spread. The ensemble keeps the forest's training
rows (descriptors and targets), so fine-tuning refits the forest on them plus the new rows (exact
duplicates, such as replayed labels, counted once).

Targets are standardised per column, after a logarithm with ``log_target`` (barriers are positive
and spread over decades; the members' predictions are averaged in physical units). With
``val_fraction > 0`` each member keeps the weights of its best epoch on an inner validation split
of its training data (early stopping); with 0 it trains ``epochs`` epochs on all of it. Saved files
are plain ``torch.save`` dicts of tensors, numbers and strings that load with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import CGConv
from torch_geometric.utils import scatter

from design.utils import ensemble_blob, load_torch_file, resolve_device, save_torch_file
from property_models.adversarial import (
    AttackConfig,
    Displacements,
    adversarial_batch,
    check_training_method,
    robustness_curve,
)
from property_models.descriptors import NAMES as DESCRIPTOR_NAMES
from property_models.descriptors import element_table
from property_models.forest import ForestArrays
from property_models.graphs import structure_graph

log = logging.getLogger(__name__)

FORMAT = "invdes-surrogate"
VERSION = 1
N_Z = 100
OUTPUT_SIGMA = 6.0  # a member's output is held within this many target std of the training mean
DESCRIPTOR_SIGMA = 10.0  # standardised descriptors are clipped here (far-out structures do not blow up)


@dataclass
class SurrogateConfig:
    targets: list[str] = field(default_factory=lambda: ["e_3d"])
    cutoff: float = 4.0
    hidden: int = 64
    layers: int = 3
    n_rbf: int = 32
    mobile_z: int = 3  # Li
    members: int = 5
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.0
    patience: int = 30
    descriptors: bool = True
    log_target: bool = True
    element_features: bool = True
    # adversarial training (property_models/adversarial.py): none, fgsm or pgd on atomic displacements
    # of at most adv_epsilon Angstrom; the loss is (1 - adv_weight) * clean + adv_weight * adversarial
    adv_method: str = "none"
    adv_epsilon: float = 0.05
    adv_steps: int = 3
    adv_weight: float = 0.5
    # blend with a random forest on the descriptors: prediction = members^(1 - w) * forest^w (log target)
    forest_weight: float = 0.0
    forest_trees: int = 300
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_training_method(self.adv_method, self.adv_epsilon, self.adv_steps, self.adv_weight)
        for name in ("hidden", "layers", "n_rbf", "members", "epochs", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"surrogate {name}={v!r} must be an int >= 1")
        if not self.targets:
            raise ValueError("surrogate targets must name at least one column")
        if not 0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 0.5) (0: fixed epochs, no early stopping)")
        if not self.lr > 0 or not self.cutoff > 0:
            raise ValueError(f"lr={self.lr} and cutoff={self.cutoff} must be > 0")
        if not 0 <= self.forest_weight <= 1:
            raise ValueError(f"forest_weight={self.forest_weight} must be in [0, 1]")
        if self.forest_weight > 0 and not self.descriptors:
            raise ValueError("forest_weight > 0 needs descriptors: true (the forest reads the descriptors)")
        if isinstance(self.forest_trees, bool) or not isinstance(self.forest_trees, int) or self.forest_trees < 1:
            raise ValueError(f"surrogate forest_trees={self.forest_trees!r} must be an int >= 1")


class _RBF(nn.Module):
    def __init__(self, n: int, cutoff: float):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.gamma = (n / cutoff) ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (d[:, None] - self.centers) ** 2)


class CrystalGraphNet(nn.Module):
    """One ensemble member: embedding -> CGConv x layers -> (global mean, mobile-ion mean
    [, standardised descriptors]) -> MLP."""

    def __init__(self, cfg: SurrogateConfig):
        super().__init__()
        self.mobile_z = cfg.mobile_z
        self.descriptors = cfg.descriptors
        self.embed = nn.Embedding(N_Z, cfg.hidden)
        self.element_features = cfg.element_features
        if cfg.element_features:  # physics first: the learnt per-element part starts at zero
            self.register_buffer("elements", torch.from_numpy(element_table(N_Z)))
            self.element_proj = nn.Linear(self.elements.shape[1], cfg.hidden)
            nn.init.zeros_(self.embed.weight)
        self.rbf = _RBF(cfg.n_rbf, cfg.cutoff)
        self.convs = nn.ModuleList(CGConv(cfg.hidden, dim=cfg.n_rbf, batch_norm=False) for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.hidden) for _ in range(cfg.layers))
        n_u = len(DESCRIPTOR_NAMES) if cfg.descriptors else 0
        self.register_buffer("u_mean", torch.zeros(n_u))
        self.register_buffer("u_std", torch.ones(n_u))
        self.head = nn.Sequential(
            nn.Linear(2 * cfg.hidden + n_u, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, len(cfg.targets))
        )

    def fit_descriptor_scaling(self, graphs: list[Data]) -> None:
        """Standardise the descriptors with the statistics of the training graphs."""
        if self.descriptors:
            u = torch.cat([g.u for g in graphs])
            self.u_mean.copy_(u.mean(0))
            self.u_std.copy_(u.std(0).clamp(min=1e-6))

    def forward(self, data: Data) -> torch.Tensor:
        h = self.embed(data.z)
        if self.element_features:
            h = h + self.element_proj(self.elements[data.z])
        e = self.rbf(data.dist)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(conv(h, data.edge_index, e))
        batch = data.batch if getattr(data, "batch", None) is not None else torch.zeros_like(data.z)
        n_graphs = int(batch.max()) + 1 if len(batch) else 0
        mean_all = scatter(h, batch, dim=0, dim_size=n_graphs, reduce="mean")
        mobile = (data.z == self.mobile_z).float()[:, None]
        count = scatter(mobile, batch, dim=0, dim_size=n_graphs, reduce="sum")
        mean_mobile = scatter(h * mobile, batch, dim=0, dim_size=n_graphs, reduce="sum") / count.clamp(min=1)
        mean_mobile = torch.where(count > 0, mean_mobile, mean_all)
        parts = [mean_all, mean_mobile]
        if self.descriptors:
            parts.append(((data.u - self.u_mean) / self.u_std).clamp(-DESCRIPTOR_SIGMA, DESCRIPTOR_SIGMA))
        return self.head(torch.cat(parts, dim=1))


@dataclass
class Prediction:
    mean: np.ndarray  # [N, T] physical units
    std: np.ndarray  # [N, T] spread of the members


class SurrogateEnsemble:
    """Members plus the target scaling; :meth:`predict` gives mean and standard deviation."""

    def __init__(self, cfg: SurrogateConfig, members: list[CrystalGraphNet], mean: torch.Tensor, std: torch.Tensor,
                 info: dict | None = None, forests: list[ForestArrays] | None = None,
                 forest_data: tuple[np.ndarray, np.ndarray] | None = None):
        self.cfg = cfg
        self.members = [m.eval() for m in members]
        self.mean = mean
        self.std = std
        self.info = info or {}
        self.forests = forests or []
        self.forest_data = forest_data  # (u [N, D], y [N, T]) the forests were fitted on
        if cfg.forest_weight > 0 and len(self.forests) != len(cfg.targets):
            raise ValueError(f"forest_weight={cfg.forest_weight} needs one forest per target; this ensemble has "
                             f"{len(self.forests)} for {len(cfg.targets)} targets")
        self.device = next(members[0].parameters()).device

    @torch.no_grad()
    def predict(self, graphs: list[Data], batch_size: int = 256) -> Prediction:
        if not graphs:
            t = len(self.cfg.targets)
            return Prediction(np.zeros((0, t)), np.zeros((0, t)))
        outs = []
        for m in self.members:
            parts = [m(b.to(self.device)).cpu() for b in DataLoader(graphs, batch_size=batch_size, shuffle=False)]
            outs.append(from_scaled(self.cfg, torch.cat(parts), self.mean, self.std))
        stack = torch.stack(outs)  # [M, N, T]
        mean = stack.mean(0).numpy()
        if self.cfg.forest_weight > 0:
            mean = blend(self.cfg, mean, predict_forests(self.cfg, self.forests, graphs))
        return Prediction(mean, stack.std(0, unbiased=False).numpy())

    def save(self, path: str | Path) -> Path:
        extra = {}
        if self.forest_data is not None:
            extra = {"forest_u": torch.as_tensor(self.forest_data[0]), "forest_y": torch.as_tensor(self.forest_data[1])}
        blob = ensemble_blob(FORMAT, VERSION, self.cfg, self.members, target_mean=self.mean.cpu(),
                             target_std=self.std.cpu(), info=self.info, forests=[f.state() for f in self.forests],
                             **extra)
        return save_torch_file(blob, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> SurrogateEnsemble:
        blob = load_torch_file(path, FORMAT, "surrogate", "retrain with `invdes surrogate`")
        # files from before these options existed were trained without them
        cfg = SurrogateConfig(**{"descriptors": False, "log_target": False, "element_features": False,
                                 **blob["config"]})
        dev = resolve_device(device)
        members = []
        for state in blob["members"]:
            m = CrystalGraphNet(cfg)
            m.load_state_dict(state)
            members.append(m.to(dev))
        forests = [ForestArrays.from_state(f) for f in blob.get("forests", [])]
        data = (blob["forest_u"].numpy(), blob["forest_y"].numpy()) if "forest_u" in blob else None
        return cls(cfg, members, blob["target_mean"], blob["target_std"], blob.get("info", {}), forests, data)


def descriptor_rows(graphs: list[Data]) -> np.ndarray:
    """[N, D] the graphs' raw descriptors."""
    return torch.cat([g.u for g in graphs]).numpy()


def fit_forests(cfg: SurrogateConfig, graphs: list[Data] | np.ndarray, y: np.ndarray, log: bool | None = None,
                seed: int | None = None) -> list[ForestArrays]:
    """One random forest per target column on the raw descriptors ``u`` of ``graphs`` (or the rows
    [N, D] given), learning the logarithm of the target with ``log`` (default ``cfg.log_target``)."""
    log = cfg.log_target if log is None else log
    u = graphs if isinstance(graphs, np.ndarray) else descriptor_rows(graphs)
    y = np.asarray(y, dtype=float).reshape(len(u), -1)
    seed = cfg.seed if seed is None else seed
    return [ForestArrays.fit(u, np.log(np.clip(col, 1e-3, None)) if log else col, cfg.forest_trees, seed=seed)
            for col in y.T]


def predict_forests(cfg: SurrogateConfig, forests: list[ForestArrays], graphs: list[Data],
                    log: bool | None = None) -> np.ndarray:
    """[N, T] the forests' predictions in physical units."""
    log = cfg.log_target if log is None else log
    u = descriptor_rows(graphs)
    cols = [f.predict(u)[0] for f in forests]
    return np.stack([np.exp(c) if log else c for c in cols], axis=1)


def blend(cfg: SurrogateConfig, members: np.ndarray, forest: np.ndarray) -> np.ndarray:
    """The members' mean and the forest's prediction weighted by ``forest_weight``: geometrically for
    a log target (where both learn), arithmetically otherwise."""
    w = cfg.forest_weight
    if cfg.log_target:
        return np.exp((1 - w) * np.log(np.clip(members, 1e-6, None)) + w * np.log(np.clip(forest, 1e-6, None)))
    return (1 - w) * members + w * forest


def graphs_for(cfg: SurrogateConfig, structures: list) -> list[Data]:
    """The graphs a surrogate of ``cfg`` reads (its cutoff; descriptors only when it uses them)."""
    return [structure_graph(s, cfg.cutoff, descriptors=cfg.descriptors) for s in structures]


def _transformed(cfg: SurrogateConfig, y: np.ndarray) -> torch.Tensor:
    """Targets in the space the members learn (log with ``log_target``); checks they are usable."""
    y = torch.as_tensor(np.asarray(y, dtype=np.float32))
    if not torch.isfinite(y).all():
        raise ValueError("surrogate targets must be finite; cap or drop infinite barriers first")
    if cfg.log_target:
        if (y <= 0).any():
            raise ValueError(f"log_target needs positive targets; the smallest is {float(y.min()):.4g}. "
                             "Set log_target false for this property")
        y = torch.log(y)
    return y


def from_scaled(cfg: SurrogateConfig, out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A member's standardised output -> physical units. The output is clipped to
    +-``OUTPUT_SIGMA``: a structure far outside the training data (a generated one can be) gets a
    large but finite prediction, never an overflow of the logarithm's inverse."""
    y = out.clamp(-OUTPUT_SIGMA, OUTPUT_SIGMA) * std + mean
    return torch.exp(y) if cfg.log_target else y


def _scaled_graphs(cfg: SurrogateConfig, graphs: list[Data], y: np.ndarray, mean: torch.Tensor | None = None,
                   std: torch.Tensor | None = None) -> tuple[list[Data], torch.Tensor, torch.Tensor]:
    """Copies of ``graphs`` carrying standardised (transformed) targets, and the scaling used
    (fitted here unless given)."""
    t = _transformed(cfg, np.asarray(y, dtype=np.float32).reshape(len(graphs), -1))
    if mean is None:
        mean = t.mean(0)
        std = t.std(0, unbiased=False).clamp(min=1e-6)
    scaled = [g.clone() for g in graphs]
    for g, row in zip(scaled, (t - mean) / std, strict=True):
        g.y = row[None]
    return scaled, mean, std


def _fit_member(cfg: SurrogateConfig, train: list[Data], val: list[Data], seed: int, device: torch.device) -> tuple[CrystalGraphNet, dict]:
    torch.manual_seed(seed)
    model = CrystalGraphNet(cfg)
    model.fit_descriptor_scaling(train)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    attack_gen = torch.Generator().manual_seed(seed + 1)
    best, best_state, best_epoch, stale = math.inf, None, 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        for batch in loader:
            batch = batch.to(device)
            loss = training_loss(cfg, model, batch, attack_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        sched.step()
        if not val:  # fixed number of epochs
            continue
        model.eval()
        with torch.no_grad():
            val_loss = float(sum(
                nn.functional.smooth_l1_loss(model(b.to(device)), b.y, reduction="sum")
                for b in DataLoader(val, batch_size=256)
            ) / max(len(val) * len(cfg.targets), 1))
        if val_loss < best:
            best, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is None:  # no validation split: the last epoch's weights
        return model.eval(), {"best_epoch": epoch, "val_loss": None, "epochs_run": epoch + 1}
    model.load_state_dict(best_state)
    return model.eval(), {"best_epoch": best_epoch, "val_loss": best, "epochs_run": epoch + 1}


def _member_loss(out: torch.Tensor, batch: Data) -> torch.Tensor:
    return nn.functional.smooth_l1_loss(out, batch.y)


def training_loss(cfg: SurrogateConfig, model: CrystalGraphNet, batch: Data, gen: torch.Generator) -> torch.Tensor:
    """The member's loss on ``batch``; with ``adv_method`` the mix of the clean loss and the loss on
    the batch's atoms displaced against the model (FGSM or PGD within ``adv_epsilon`` Angstrom)."""
    clean = _member_loss(model(batch), batch)
    if cfg.adv_method == "none":
        return clean
    attack_cfg = AttackConfig(cfg.adv_method, cfg.adv_epsilon, cfg.adv_steps)
    adv = adversarial_batch(model, _member_loss, batch, Displacements(), attack_cfg, gen)
    return (1 - cfg.adv_weight) * clean + cfg.adv_weight * _member_loss(model(adv), adv)


def robustness(ens: SurrogateEnsemble, graphs: list[Data], y: np.ndarray, budgets: list[float], steps: int = 10,
               seed: int = 0) -> dict:
    """Spearman and MAE (physical units) of the ensemble's first target on ``graphs`` whose atoms a
    PGD attack displaces by up to each budget (Angstrom) to push the prediction away from ``y`` [N]
    (see :func:`property_models.adversarial.robustness_curve`)."""
    from property_models.barriers import spearman

    if ens.cfg.forest_weight > 0:
        raise ValueError("robustness attacks need a differentiable model; this ensemble blends in a random forest "
                         "(forest_weight > 0): evaluate one trained with forest_weight 0")
    y = np.asarray(y, dtype=np.float32).reshape(len(graphs), -1)[:, :1]
    first = dataclasses.replace(ens.cfg, targets=ens.cfg.targets[:1])
    scaled, _, _ = _scaled_graphs(first, graphs, y, ens.mean[:1], ens.std[:1])

    def loss(out: torch.Tensor, batch: Data) -> torch.Tensor:
        return nn.functional.smooth_l1_loss(out[:, :1], batch.y)

    def predict(outs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([from_scaled(first, o[:, :1].cpu(), ens.mean[:1], ens.std[:1]) for o in outs]).mean(0)[:, 0]

    def metric(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        return {"spearman": spearman(truth[:, 0], pred), "mae": float(np.abs(truth[:, 0] - pred).mean())}

    scaled = [g.to(ens.device) for g in scaled]
    return robustness_curve(ens.members, loss, predict, scaled, y, metric, Displacements(), budgets, steps, seed=seed)


def finetune_ensemble(ens: SurrogateEnsemble, graphs: list[Data], y: np.ndarray, epochs: int,
                      lr_factor: float = 0.25, seed: int = 0) -> SurrogateEnsemble:
    """A copy of ``ens`` whose members trained ``epochs`` more epochs on ``graphs`` with targets ``y``
    [N, T] (physical units), at ``lr_factor`` times the original learning rate, keeping the target
    scaling (so earlier and new predictions stay comparable). No early stopping: the new data is
    small and every point of it is wanted."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be an int >= 1")
    cfg = ens.cfg
    scaled, _, _ = _scaled_graphs(cfg, graphs, y, ens.mean, ens.std)
    start = time.perf_counter()
    members = []
    for k, member in enumerate(ens.members):
        model = copy.deepcopy(member).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr * lr_factor, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        loader = DataLoader(scaled, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        attack_gen = torch.Generator().manual_seed(seed * 1000 + k + 1)
        for _ in range(epochs):
            for batch in loader:
                batch = batch.to(ens.device)
                loss = training_loss(cfg, model, batch, attack_gen)  # an adversarially trained model stays so
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
        members.append(model.eval())
    info = {**ens.info, "finetuned": [*ens.info.get("finetuned", []),
                                      {"n": len(graphs), "epochs": epochs, "wall_s": time.perf_counter() - start}]}
    forests, data = ens.forests, ens.forest_data
    if cfg.forest_weight > 0 and data is not None:  # refit on the kept rows plus the new ones, each row once
        rows = np.concatenate([np.hstack([data[0], data[1]]),
                               np.hstack([descriptor_rows(graphs), np.asarray(y, np.float32).reshape(len(graphs), -1)])])
        rows = rows[np.sort(np.unique(rows, axis=0, return_index=True)[1])]
        n_u = data[0].shape[1]
        data = (rows[:, :n_u].astype(np.float32), rows[:, n_u:].astype(np.float32))
        forests = fit_forests(cfg, data[0], data[1], seed=cfg.seed + seed)
    return SurrogateEnsemble(cfg, members, ens.mean, ens.std, info, forests, data)


def train_ensemble(cfg: SurrogateConfig, graphs: list[Data], y: np.ndarray) -> SurrogateEnsemble:
    """Train ``cfg.members`` members on ``graphs`` with targets ``y`` [N, T] (physical units, finite)."""
    y = np.asarray(y, dtype=np.float32).reshape(len(graphs), -1)
    if y.shape[1] != len(cfg.targets):
        raise ValueError(f"y has {y.shape[1]} columns but the config names targets {cfg.targets}")
    if len(graphs) < 10:
        raise ValueError(f"{len(graphs)} training structures are too few for a surrogate (need >= 10)")
    device = resolve_device(cfg.device)
    scaled, mean, std = _scaled_graphs(cfg, graphs, y)
    rng = np.random.default_rng(cfg.seed)
    start = time.perf_counter()
    members, stats = [], []
    for k in range(cfg.members):
        order = rng.permutation(len(scaled))
        n_val = int(round(cfg.val_fraction * len(scaled)))
        if cfg.val_fraction > 0:
            n_val = max(1, n_val)
        val, train = [scaled[i] for i in order[:n_val]], [scaled[i] for i in order[n_val:]]
        model, st = _fit_member(cfg, train, val, cfg.seed * 1000 + k, device)
        members.append(model)
        stats.append(st)
        log.info("surrogate member %d/%d: kept epoch %d, inner-val loss %s (%.0f s so far)", k + 1, cfg.members,
                 st["best_epoch"], "-" if st["val_loss"] is None else f"{st['val_loss']:.4f}",
                 time.perf_counter() - start)
    forests, data = [], None
    if cfg.forest_weight > 0:
        data = (descriptor_rows(graphs), np.asarray(y, np.float32).reshape(len(graphs), -1))
        forests = fit_forests(cfg, data[0], data[1])
    info = {"n_train": len(graphs), "members": stats, "wall_s": time.perf_counter() - start, "device": str(device)}
    return SurrogateEnsemble(cfg, members, mean, std, info, forests, data)
