"""Differentiable chemistry penalty of soft SELFIES token sequences.

SELFIES decodes every token sequence into a valid molecule, but not always into the molecule
the tokens ask for: a bond order the previous atom has no valence left for is *demoted*, and a
ring token can close a strained ring. The penalty is the expected number of such events per
molecule under the per-position token probabilities ``p`` [B, L + 1, V] (positions weighted by
the probability that the molecule has not ended yet):

* ``valence``: expected bond-order excess between consecutive atom tokens,
  ``sum_i w_i * p_i^T M p_{i+1}`` with ``M[a, b] = max(0, order(b) - valence(a))`` for atom
  tokens ``a``, ``b`` (e.g. ``[F][=O]`` asks a double bond of fluorine: excess 1). This reads the
  token chain as a chain of atoms; a token right after a branch or ring token is a size index,
  not an atom, and is skipped (weighted by the probability that it is not). Bonds across a closed
  branch are not seen.
* ``small_ring``: expected number of ring tokens whose size index closes a 3- or 4-membered ring
  (``[Ring1]`` followed by index 1 or 2).
* ``unwanted``: expected number of atom tokens (not size indices) whose atom the filters reject
  (charged or outside C, N, S, O, F, Cl, Br).

A disconnected molecule cannot be written: the vocabulary has no fragment separator.
"""

from __future__ import annotations

import re

import selfies as sf
import torch
from torch import nn

from design.domains.molecule.chemistry import ALLOWED_ATOMS
from design.domains.molecule.tokens import MoleculeBatch

_ATOM = re.compile(r"^\[([=#/\\]?)([A-Z][a-z]?)(@{0,2})(H\d)?([+-]\d*)?\]$")
_ORDER = {"": 1, "/": 1, "\\": 1, "=": 2, "#": 3}


def token_tables(tokens: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per-token chemistry of a vocabulary, each a [V] float tensor.

    ``is_atom``, ``order`` (bond order the token asks for), ``valence`` (the atom's bonding
    capacity: SELFIES's default constraint for the element and charge, minus explicit H),
    ``indices_k`` (a branch or ring token followed by k size-index tokens), ``is_ring``,
    ``small_ring_index`` (as the size index of a one-index ring token it closes a 3- or 4-membered
    ring), ``unwanted``.
    """
    constraints = sf.get_semantic_constraints()
    n = len(tokens)
    t = {k: torch.zeros(n) for k in ("is_atom", "order", "valence", "is_ring", "small_ring_index", "unwanted",
                                      "indices_1", "indices_2", "indices_3")}
    for i, tok in enumerate(tokens):
        size = re.search(r"(Ring|Branch)([123])\]$", tok)
        if size is not None:  # followed by 1, 2 or 3 size-index tokens
            t[f"indices_{size.group(2)}"][i] = 1.0
            t["is_ring"][i] = float(size.group(1) == "Ring")
        m = _ATOM.match(tok)
        if m is not None:
            bond, elem, _, hs, charge = m.groups()
            charge = charge or ""
            if charge in ("+", "-"):
                charge += "1"
            key = elem + charge
            val = constraints.get(key, constraints["?"]) - (int(hs[1:]) if hs else 0)
            t["is_atom"][i] = 1.0
            t["order"][i] = _ORDER[bond]
            t["valence"][i] = max(val, 0)
            t["unwanted"][i] = float(bool(charge) or elem not in ALLOWED_ATOMS)
        try:
            q = sf.grammar_rules.get_index_from_selfies(tok)
        except Exception:  # not an index symbol
            q = -1
        t["small_ring_index"][i] = float(q in (1, 2))
    return t


class MoleculePenalty(nn.Module):
    """Soft batch -> [B] weighted penalty; the last call's parts are in ``.terms`` ([B] each)."""

    def __init__(self, tokens: tuple[str, ...], valence_weight: float = 1.0, small_ring_weight: float = 1.0,
                 unwanted_weight: float = 1.0):
        super().__init__()
        tab = token_tables(tokens)
        excess = torch.relu(tab["order"][None, :] - tab["valence"][:, None])
        self.register_buffer("pair_excess", excess * tab["is_atom"][:, None] * tab["is_atom"][None, :])
        for k in ("is_ring", "small_ring_index", "unwanted", "indices_1", "indices_2", "indices_3"):
            self.register_buffer(k, tab[k])
        self.weights = {"valence": valence_weight, "small_ring": small_ring_weight, "unwanted": unwanted_weight}
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, batch: MoleculeBatch) -> torch.Tensor:
        p = batch.tokens  # [B, T, V]
        alive = batch.alive  # [B, T]
        atom_like = alive * (1 - self.index_probability(p))  # inside the molecule and not a size index
        pair = torch.einsum("btv,vw,btw->bt", p[:, :-1], self.pair_excess, p[:, 1:])
        one_index_ring = self.is_ring * self.indices_1
        ring = (p[:, :-1] @ one_index_ring) * (p[:, 1:] @ self.small_ring_index) * alive[:, 1:]
        self.terms = {
            "valence": (atom_like[:, :-1] * atom_like[:, 1:] * pair).sum(1),
            "small_ring": ring.sum(1),
            "unwanted": ((p @ self.unwanted) * atom_like).sum(1),
        }
        return sum(self.weights[k] * v for k, v in self.terms.items())

    def index_probability(self, p: torch.Tensor) -> torch.Tensor:
        """[B, T] probability that a position holds a size index (the 1st to 3rd token after a
        branch or ring token), not an atom: ``[P]`` there means 15, not phosphorus."""
        idx = torch.zeros_like(p[..., 0])
        for k, after in ((1, self.indices_1 + self.indices_2 + self.indices_3), (2, self.indices_2 + self.indices_3),
                         (3, self.indices_3)):
            idx[:, k:] = idx[:, k:] + p[:, :-k] @ after
        return idx.clamp(max=1.0)
