"""Adversarial attacks on the property models and adversarial training against them (FGSM, PGD).

A generator optimised against a learnt property model finds inputs the model scores well that are
not really good: adversarial examples. The remedy studied here is adversarial training (Goodfellow
et al., 2015: FGSM; Madry et al., 2018: PGD): fit the model on worst-case perturbations of its
training inputs within a budget ``epsilon``, and measure the clean-vs-robust trade-off.

**Perturbation spaces** (continuous spaces the models read; each knows how to apply a perturbation
to a torch-geometric batch, take an ascent step and project back into the budget):

* :class:`Displacements` (crystals, budget in Angstrom): every atom moves by at most ``epsilon``
  (an L2 ball per atom). The graph's edge vectors give the displaced distances exactly and
  differentiably (no new neighbours are searched, so an edge stays an edge). The Li-environment
  distance descriptors (:data:`property_models.descriptors.DISTANCE_NAMES`) move by at most
  ``2 * epsilon``, the most that displacements of ``epsilon`` can change an interatomic distance;
  the other descriptors (composition, volume, coordination counts) stay. This over-approximates
  what real displacements can do, so robust errors measured with it are upper bounds.
* :class:`FeatureBox` (molecules, budget in feature units): the atom feature vectors (one-hot
  element, degree, charge, aromaticity, H count, ring flag) move within an L-infinity box of
  ``epsilon`` and stay in [0, 1]; the bonds stay.

**Attacks.** :func:`attack` maximises a loss over the perturbation: FGSM is one step of size
``epsilon`` from the clean input; PGD starts at a random point of the budget and takes ``steps``
steps of ``step_size`` (default ``2.5 * epsilon / steps``), projecting after each. Steps follow the
sign of the gradient in an L-infinity box and its per-atom direction in an L2 ball. Only the input
perturbation receives gradients; the models' parameters are untouched.

**Robustness.** :func:`robustness_curve` evaluates metrics (Spearman of a regressor, ROC-AUC of a
classifier, ...) on inputs attacked with PGD at growing budgets; :func:`curve_area` is the area under
that accuracy-robustness curve divided by the largest budget (the mean metric over the budget
range; equal to the clean metric for a model no attack can move).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from property_models.descriptors import DISTANCE_NAMES
from property_models.descriptors import NAMES as DESCRIPTOR_NAMES

METHODS = ("none", "fgsm", "pgd")
_DIST_IDX = torch.tensor([DESCRIPTOR_NAMES.index(n) for n in DISTANCE_NAMES])


@dataclass(frozen=True)
class AttackConfig:
    """One attack: ``method`` fgsm or pgd, the budget ``epsilon`` (the space's unit), PGD's
    ``steps`` and ``step_size`` (None: ``2.5 * epsilon / steps``) and its random start."""

    method: str = "pgd"
    epsilon: float = 0.05
    steps: int = 5
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self):
        if self.method not in ("fgsm", "pgd"):
            raise ValueError(f"attack method={self.method!r} must be 'fgsm' or 'pgd'")
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"attack epsilon={self.epsilon!r} must be a finite number >= 0")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"attack steps={self.steps!r} must be an int >= 1")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"attack step_size={self.step_size!r} must be > 0 (or None for 2.5 * epsilon / steps)")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps


def check_training_method(method: str, epsilon: float, steps: int, weight: float) -> None:
    """Validate the adversarial-training settings of a model config (``method`` none/fgsm/pgd)."""
    if method not in METHODS:
        raise ValueError(f"adversarial training method adv_method={method!r} must be one of {METHODS}")
    if method != "none":
        AttackConfig(method, epsilon, steps)
        if not epsilon > 0:
            raise ValueError(f"adv_epsilon={epsilon} must be > 0 for adv_method={method!r}")
    if not 0 <= weight <= 1:
        raise ValueError(f"adv_weight={weight} must be in [0, 1] (the adversarial share of the loss)")


# --------------------------------------------------------------------------- perturbation spaces
class Displacements:
    """Atomic displacements of a crystal graph batch (Angstrom); see the module docstring.

    A perturbation is ``(d_pos [N, 3], d_u [G, len(DISTANCE_NAMES)])``."""

    unit = "A"

    def zeros(self, batch: Data) -> list[torch.Tensor]:
        n_graphs = batch.u.shape[0] if getattr(batch, "u", None) is not None else 0
        return [torch.zeros(batch.num_nodes, 3, device=batch.vec.device),
                torch.zeros(n_graphs, len(DISTANCE_NAMES), device=batch.vec.device)]

    def random(self, batch: Data, eps: float, gen: torch.Generator) -> list[torch.Tensor]:
        d_pos, d_u = self.zeros(batch)
        direction = torch.randn(d_pos.shape, generator=gen).to(d_pos.device)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-12)
        radius = eps * torch.rand(len(d_pos), 1, generator=gen).pow(1 / 3).to(d_pos.device)  # uniform in the ball
        d_u = (2 * torch.rand(d_u.shape, generator=gen) - 1).to(d_u.device) * 2 * eps
        return [direction * radius, d_u]

    def apply(self, batch: Data, delta: list[torch.Tensor]) -> Data:
        if getattr(batch, "vec", None) is None:
            raise ValueError("crystal graphs carry no edge vectors (vec); rebuild them with property_models.graphs")
        d_pos, d_u = delta
        out = copy.copy(batch)
        src, dst = batch.edge_index
        out.dist = (batch.vec + d_pos[src] - d_pos[dst]).norm(dim=1).clamp(min=1e-6)
        if getattr(batch, "u", None) is not None and d_u.numel():
            idx = _DIST_IDX.to(batch.u.device)
            out.u = batch.u.index_add(1, idx, d_u)
        return out

    def ascend(self, delta: list[torch.Tensor], grads: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
        g_pos, g_u = grads
        step = g_pos / g_pos.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return [delta[0] + alpha * step, delta[1] + 2 * alpha * g_u.sign()]

    def project(self, delta: list[torch.Tensor], batch: Data, eps: float) -> list[torch.Tensor]:
        d_pos, d_u = delta
        norm = d_pos.norm(dim=1, keepdim=True)
        d_pos = d_pos * torch.where(norm > eps, eps / norm.clamp(min=1e-12), torch.ones_like(norm))
        return [d_pos, d_u.clamp(-2 * eps, 2 * eps)]

    def size(self, delta: list[torch.Tensor]) -> float:
        """The largest displacement of an atom (Angstrom)."""
        return float(delta[0].norm(dim=1).max()) if delta[0].numel() else 0.0


class FeatureBox:
    """Node-feature perturbations of a molecular graph batch within an L-infinity box, features kept
    in [0, 1]. A perturbation is ``(d_x [N, F],)``."""

    unit = "feature units"

    def zeros(self, batch: Data) -> list[torch.Tensor]:
        return [torch.zeros_like(batch.x)]

    def random(self, batch: Data, eps: float, gen: torch.Generator) -> list[torch.Tensor]:
        d = (2 * torch.rand(batch.x.shape, generator=gen) - 1).to(batch.x.device) * eps
        return self.project([d], batch, eps)

    def apply(self, batch: Data, delta: list[torch.Tensor]) -> Data:
        out = copy.copy(batch)
        out.x = batch.x + delta[0]
        return out

    def ascend(self, delta: list[torch.Tensor], grads: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
        return [delta[0] + alpha * grads[0].sign()]

    def project(self, delta: list[torch.Tensor], batch: Data, eps: float) -> list[torch.Tensor]:
        d = delta[0].clamp(-eps, eps)
        return [(batch.x + d).clamp(0.0, 1.0) - batch.x]

    def size(self, delta: list[torch.Tensor]) -> float:
        """The largest change of a feature."""
        return float(delta[0].abs().max()) if delta[0].numel() else 0.0


Space = Displacements | FeatureBox


# --------------------------------------------------------------------------------------- attacks
def attack(loss_fn: Callable[[Data], torch.Tensor], batch: Data, space: Space, cfg: AttackConfig,
           gen: torch.Generator | None = None) -> list[torch.Tensor]:
    """A perturbation of ``batch`` within ``cfg.epsilon`` that (approximately) maximises
    ``loss_fn(space.apply(batch, delta))``, a scalar. Parameters receive no gradient."""
    if cfg.epsilon == 0:
        return space.zeros(batch)
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    if cfg.method == "fgsm":
        delta, steps, alpha = space.zeros(batch), 1, cfg.epsilon
    else:
        delta = space.random(batch, cfg.epsilon, gen) if cfg.random_start else space.zeros(batch)
        steps, alpha = cfg.steps, cfg.alpha
    for _ in range(steps):
        delta = [d.detach().requires_grad_(True) for d in delta]
        with torch.enable_grad():
            loss = loss_fn(space.apply(batch, delta))
            grads = torch.autograd.grad(loss, delta, allow_unused=True)
        grads = [torch.zeros_like(d) if g is None else g for d, g in zip(delta, grads, strict=True)]
        with torch.no_grad():
            delta = space.project(space.ascend(delta, grads, alpha), batch, cfg.epsilon)
    return [d.detach() for d in delta]


def adversarial_batch(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor, Data], torch.Tensor], batch: Data,
                      space: Space, cfg: AttackConfig, gen: torch.Generator) -> Data:
    """``batch`` perturbed against ``model`` for a training step. The attack runs with the model in
    eval mode (batch-norm running statistics and dropout as deployed, and untouched by the attack);
    the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        delta = attack(lambda b: loss_fn(model(b), b), batch, space, cfg, gen)
    finally:
        model.train(was_training)
    return space.apply(batch, delta)


# ------------------------------------------------------------------------------------ robustness
def robustness_curve(members: Sequence[torch.nn.Module], loss_fn: Callable[[torch.Tensor, Data], torch.Tensor],
                     predict_fn: Callable[[list[torch.Tensor]], torch.Tensor], graphs: list[Data], y: np.ndarray,
                     metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]], space: Space,
                     budgets: Sequence[float], steps: int = 10, batch_size: int = 256, seed: int = 0) -> dict:
    """The metrics of an ensemble on ``graphs`` attacked by PGD at every budget in ``budgets``.

    The attack maximises the members' mean ``loss_fn(output, batch)`` (a white-box attack on the
    whole ensemble; ``graphs`` carry the targets the loss needs); ``predict_fn(outputs)`` turns the
    members' outputs into the prediction that ``metric_fn(y, prediction) -> {name: value}`` scores.
    Returns ``{"budgets", "metrics": {name: [value per budget]}, "area": {name: curve_area},
    "shift": [mean |prediction - clean prediction| per budget], ...}``."""
    budgets = [float(b) for b in budgets]
    if not budgets or budgets != sorted(budgets) or budgets[0] < 0:
        raise ValueError(f"budgets={budgets} must be a non-empty increasing list of numbers >= 0")
    if len(graphs) != len(y):
        raise ValueError(f"{len(graphs)} graphs but {len(y)} labels")
    members = [m.eval() for m in members]

    def ensemble_loss(b: Data) -> torch.Tensor:
        return torch.stack([loss_fn(m(b), b) for m in members]).mean()

    clean, curves, shift = None, {}, []
    for eps in budgets:
        gen = torch.Generator().manual_seed(seed)
        cfg = AttackConfig("pgd", eps, steps)
        preds = []
        for b in DataLoader(graphs, batch_size=batch_size, shuffle=False):
            delta = attack(ensemble_loss, b, space, cfg, gen)
            with torch.no_grad():
                preds.append(predict_fn([m(space.apply(b, delta)) for m in members]))
        pred = torch.cat(preds).double().numpy()
        clean = pred if clean is None else clean
        for name, value in metric_fn(np.asarray(y), pred).items():
            curves.setdefault(name, []).append(float(value))
        shift.append(float(np.abs(pred - clean).mean()))
    return {"budgets": budgets, "metrics": curves, "area": {k: curve_area(budgets, v) for k, v in curves.items()},
            "shift": shift, "steps": steps, "unit": space.unit}


def curve_area(budgets: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over ``budgets`` divided by the budget range (the mean value
    over the range); the single value for a single budget."""
    b, v = np.asarray(budgets, float), np.asarray(values, float)
    if len(b) == 1 or b[-1] == b[0]:
        return float(v[0])
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(b)) / (b[-1] - b[0]))
