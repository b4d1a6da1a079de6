"""The SELFIES derivation of token rows, followed one token at a time for a whole batch.

SELFIES asks a decoder to count. A ring token (``[Ring1]``, ``[=Ring1]``, ...) is followed by a
size index Q (``[C]`` 0, ``[Ring1]`` 1, ``[Ring2]`` 2, ``[Branch1]`` 3, ... ``[=C]`` 15; any other
token 0; two or three index tokens are base-16 digits) and bonds the current atom to the atom
written Q + 1 atoms before it, counting atoms in string order, branches included; a branch token's
index says how many symbols (Q + 1) its branch has. So the size of the ring a token closes is only
known from the molecular graph, and a decoder that miscounts writes a macrocycle (8 or more atoms,
which the MOSES filters reject) or leaves a ring open.

:class:`Derivation` tracks, for B rows at once and in tensors, what the SELFIES decoder (the
``selfies`` package) derives from the tokens seen so far: the derivation state (the current atom's
free valence), the current atom, the graph distances between the atoms written, the open branches
(their remaining symbol budgets) and whether the next token is read as a size index. Its rules:
an atom token bonds to the current atom with the order asked, capped by both atoms' free valence,
and becomes the current atom (an atom left with no valence ends its chain: the rest of its branch,
or of the molecule, is read and ignored); a branch token at a state of 2 or more reads its index
and derives the next Q + 1 symbols as a branch of the current atom, after which derivation resumes
from that atom (below 2 it is skipped and its would-be index is read as a symbol); a ring token at
a state above 0 reads its index and closes the ring (at 0 it is skipped). Distances are shortest
paths over the bonds written so far, ring closures included (also a closure the decoder will later
drop for want of valence).

It serves three things:

* :meth:`Derivation.features`: per row, what a decoder needs to count right (which ring size each
  index value 0-11 would close now, the state, whether an index is being read, the innermost
  branch's remaining budget, the branch depth), fed to the decoder at every step
  (``model.grammar_features``); with ``valence`` (``model.grammar_valence``) also what a ring
  closure to each of those atoms would meet there (the partner's free valence, whether it already
  has a double or triple bond) and whether the current atom has one: a ring closes aromatic only
  if its bonds alternate, and a closure to an atom without free valence is dropped.
* :meth:`Derivation.forbidden`: at a one-index ring token's index, the values that would close a
  ring of ``MAX_RING_SIZE`` or more atoms (constrained decoding masks them; the post-hoc rule of
  ``decoding.py`` still opens any large ring that is left, e.g. from two-index ring tokens).
* The molecule as written (each atom's token, the atom it bonded to and the order, the ring closures
  in reading order): ``assemble.py`` builds RDKit molecules from it without the ``selfies`` package's
  SMILES (``distances=False`` skips the distances, which only the other two need).
"""

from __future__ import annotations

import re

import selfies as sf
import torch

from design.domains.molecule.chemistry import MAX_RING_SIZE
from design.domains.molecule.penalty import token_tables

_SIZED = re.compile(r"^\[([=#]?)(?:[-/\\]{0,2})(Ring|Branch)([123])\]$")
_ORDER = {"": 1, "=": 2, "#": 3}
_BASE = 16  # size-index digits
_FAR = 99  # distance between atoms not connected
ATOM, BRANCH, RING, OTHER = 1, 2, 3, 4
RING_QS = 12  # index values whose ring size the features report
_SIZE_BINS = 8  # none, 2 (already bonded), 3, 4, 5, 6, 7, >= 8
N_FEATURES = RING_QS * _SIZE_BINS + 5 + 2 + 9 + 4
_FREE_BINS = 4  # a partner's free valence: 0, 1, 2, 3+
N_VALENCE_FEATURES = RING_QS * (_FREE_BINS + 1) + 1


def n_features(valence: bool) -> int:
    """Width of :meth:`Derivation.features`."""
    return N_FEATURES + (N_VALENCE_FEATURES if valence else 0)


class SelfiesGrammar:
    """Per-token tables of a vocabulary ([V] long tensors): ``kind`` (0 end, ATOM, BRANCH, RING,
    OTHER), ``order`` (bond order asked), ``cap`` (an atom's bonding capacity), ``n_index`` (size-index
    tokens after a branch or ring token) and ``q`` (value as a size-index digit)."""

    def __init__(self, vocab: tuple[str, ...]):
        tab = token_tables(vocab)
        n = len(vocab)
        kind, order, n_index = [OTHER] * n, [0] * n, [0] * n
        kind[0] = 0
        for i, tok in enumerate(vocab[1:], start=1):
            m = _SIZED.match(tok)
            if m is not None:
                kind[i] = BRANCH if m.group(2) == "Branch" else RING
                order[i] = _ORDER[m.group(1)]
                n_index[i] = int(m.group(3))
            elif tab["is_atom"][i]:
                kind[i] = ATOM
                order[i] = int(tab["order"][i])
        code = sf.grammar_rules.INDEX_CODE
        self.vocab = vocab
        self.kind = torch.tensor(kind)
        self.order = torch.tensor(order)
        self.cap = tab["valence"].long()
        self.n_index = torch.tensor(n_index)
        self.q = torch.tensor([code.get(tok, 0) for tok in vocab])

    def start(self, rows: int, max_atoms: int, device: torch.device | str = "cpu", distances: bool = True) -> Derivation:
        return Derivation(self, rows, max_atoms, device, distances)

    def run(self, tokens: torch.Tensor, valence: bool = False) -> torch.Tensor:
        """[B, T, n_features(valence)] features before each position of hard token rows [B, T]
        (teacher forcing: position t sees the derivation of tokens 0 .. t - 1)."""
        return dense_features(self.run_index(tokens, valence), valence)

    def run_index(self, tokens: torch.Tensor, valence: bool = False) -> torch.Tensor:
        """[B, T, K] the same as ``Derivation.feature_index`` (the ones' columns)."""
        d = self.start(tokens.shape[0], tokens.shape[1], tokens.device)
        out = []
        for t in range(tokens.shape[1]):
            out.append(d.feature_index(valence))
            if t + 1 < tokens.shape[1]:
                d.step(tokens[:, t])
        return torch.stack(out, dim=1)


def dense_features(index: torch.Tensor, valence: bool = False) -> torch.Tensor:
    """[..., n_features(valence)] float features from their ``Derivation.feature_index`` [..., K]
    (any integer dtype; the index n_features(valence) marks a group without a one)."""
    width = n_features(valence)
    dense = torch.zeros(*index.shape[:-1], width + 1, device=index.device)
    return dense.scatter_(-1, index.long(), 1.0)[..., :width]


class Derivation:
    """The derivation state of B token rows (see module docstring); :meth:`step` reads one token
    per row, :meth:`keep` drops rows."""

    def __init__(self, grammar: SelfiesGrammar, rows: int, max_atoms: int, device: torch.device | str,
                 distances: bool = True):
        long = {"dtype": torch.long, "device": device}
        self.tables = {k: getattr(grammar, k).to(device) for k in ("kind", "order", "cap", "n_index", "q")}
        self.n = torch.zeros(rows, **long)  # atoms written
        self.cur = torch.zeros(rows, **long)  # current atom (valid once n > 0)
        self.state = torch.zeros(rows, **long)  # free valence of the current atom; 0 before the first atom
        self.ended = torch.zeros(rows, dtype=torch.bool, device=device)  # this frame's chain has ended
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)  # the end token was read
        # graph distances between the atoms: what ring sizes, features and the mask need; without
        # ``distances`` (only the graph is wanted, ``assemble.py``) they are not kept, the costliest part
        self.dist = (torch.full((rows, max_atoms, max_atoms), _FAR, dtype=torch.int16, device=device) if distances
                     else None)
        # per atom: free valence (capacity less the bonds written, ring closures at their effective
        # order) and whether it has a double or triple bond
        self.free = torch.zeros(rows, max_atoms, **long)
        self.multi = torch.zeros(rows, max_atoms, dtype=torch.bool, device=device)
        # the molecule as written: each atom's token, the atom it bonded to and the bond's order (0 for
        # the first atom), and the ring closures in reading order (partner, atom, order asked), which
        # the decoder forms at the end (``assemble.py``)
        self.atom_tok = torch.zeros(rows, max_atoms, **long)
        self.parent = torch.zeros(rows, max_atoms, **long)
        self.parent_order = torch.zeros(rows, max_atoms, **long)
        self.rings = torch.zeros(rows, max_atoms // 2 + 1, 3, **long)  # a ring token and its index: 2+ tokens
        self.n_rings = torch.zeros(rows, **long)
        # a branch takes a branch token and an index before the next can open inside it, so a row of
        # at most max_atoms tokens nests at most max_atoms // 2 branches
        self.max_depth = max_atoms // 2 + 1
        self.depth = torch.zeros(rows, **long)  # open branches
        self.left = torch.zeros(rows, self.max_depth, **long)  # symbols each open branch still derives
        self.saved_cur = torch.zeros(rows, self.max_depth, **long)  # the parent's current atom, state, ended
        self.saved_state = torch.zeros(rows, self.max_depth, **long)
        self.saved_ended = torch.zeros(rows, self.max_depth, dtype=torch.bool, device=device)
        self.pend_left = torch.zeros(rows, **long)  # size-index tokens still to read
        self.pend_kind = torch.zeros(rows, **long)
        self.pend_n = torch.zeros(rows, **long)  # size-index tokens the pending token reads in all
        self.pend_order = torch.zeros(rows, **long)
        self.pend_q = torch.zeros(rows, **long)
        self.active = torch.arange(rows, device=device)  # the caller's rows among the rows kept here
        self.origin = torch.arange(rows, device=device)  # each kept row's index among the rows started with
        self._dropped: list[dict[str, torch.Tensor]] = []  # the graphs of rows compacted away (``graph``)
        self._sizes: torch.Tensor | None = None  # ``ring_sizes`` of the current state

    # ------------------------------------------------------------------ reading
    def step(self, tok: torch.Tensor) -> None:
        """Read token ``tok`` [B] (hard indices) in every row."""
        self._sizes = None
        if len(self.active) < len(self.n):  # rows dropped but still kept here: they read end tokens
            tok = torch.zeros_like(self.n).index_copy_(0, self.active, tok)
        tab = self.tables
        kind, order, cap = tab["kind"][tok], tab["order"][tok], tab["cap"][tok]
        live = ~self.finished & (tok != 0)
        cut = ~self.finished & (tok == 0) & (self.pend_left > 0)
        while bool(cut.any()):  # the string ends inside a size index: missing digits read as 0
            self._read_index(cut, torch.zeros_like(tok))
            cut = cut & (self.pend_left > 0)
        self.finished |= tok == 0
        # every open branch counts the symbol
        open_ = torch.arange(self.max_depth, device=tok.device)[None] < self.depth[:, None]
        self.left -= (open_ & live[:, None]).long()

        reading = live & (self.pend_left > 0)
        if bool(reading.any()):
            self._read_index(reading, tab["q"][tok])
        free = live & ~reading & ~self.ended
        self._atom(free & (kind == ATOM), tok, order, cap)
        for k, need in ((BRANCH, 1), (RING, 0)):  # a branch needs a state of 2+, a ring of 1+
            starts = free & (kind == k) & (self.state > need)
            if bool(starts.any()):
                self.pend_left = torch.where(starts, tab["n_index"][tok], self.pend_left)
                self.pend_n = torch.where(starts, tab["n_index"][tok], self.pend_n)
                self.pend_kind = torch.where(starts, torch.full_like(tok, k), self.pend_kind)
                self.pend_order = torch.where(starts, order, self.pend_order)
                self.pend_q = torch.where(starts, torch.zeros_like(tok), self.pend_q)
        self._pop()

    def _read_index(self, reading: torch.Tensor, q: torch.Tensor) -> None:
        self.pend_q = torch.where(reading, self.pend_q * _BASE + q, self.pend_q)
        self.pend_left = self.pend_left - reading.long()
        done = reading & (self.pend_left == 0)
        branch = done & (self.pend_kind == BRANCH)
        ring = done & (self.pend_kind == RING)
        if bool(branch.any()):
            rows = branch.nonzero().squeeze(1)
            init = torch.minimum(self.state[rows] - 1, self.pend_order[rows])
            slot = self.depth[rows]
            if bool((slot >= self.max_depth).any()):
                raise ValueError(f"SELFIES branches nested deeper than {self.max_depth}: a row longer than the "
                                 "max_atoms this derivation was started with")
            self.left[rows, slot] = self.pend_q[rows] + 1
            self.saved_cur[rows, slot] = self.cur[rows]
            self.saved_state[rows, slot] = self.state[rows] - init
            self.saved_ended[rows, slot] = False
            self.depth[rows] += 1
            self.state[rows] = init
        if bool(ring.any()):
            rows = ring.nonzero().squeeze(1)
            cur = self.cur[rows]
            partner = (cur - (self.pend_q[rows] + 1)).clamp(min=0)
            closes = partner != cur
            asked = torch.minimum(self.pend_order[rows], self.state[rows])
            r, c, p, o = rows[closes], cur[closes], partner[closes], asked[closes]
            self._close_valence(r, c, p, o)
            self._bond(r, c, p)
            self._record_ring(r, torch.stack([p, c, o], dim=1))
            left = self.state[rows] - asked
            self.state[rows] = left
            self.ended[rows] = left == 0
        self.pend_kind = torch.where(done, torch.zeros_like(self.pend_kind), self.pend_kind)

    def _atom(self, atoms: torch.Tensor, tok: torch.Tensor, order: torch.Tensor, cap: torch.Tensor) -> None:
        if not bool(atoms.any()):
            return
        rows = atoms.nonzero().squeeze(1)
        new, cur, state, cap = self.n[rows], self.cur[rows], self.state[rows], cap[rows]
        m = int(new.max()) + 1  # atoms written in these rows, the new one included
        first = state == 0  # the molecule's first atom (a later state of 0 has ended the chain)
        bond = torch.where(first, torch.zeros_like(state), torch.minimum(torch.minimum(order[rows], state), cap))
        if self.dist is not None:
            grown = self.dist[rows, cur, :m] + 1
            grown.masked_fill_((bond == 0)[:, None], _FAR).clamp_(max=_FAR)
            grown[torch.arange(len(rows), device=rows.device), new] = 0
            self.dist[rows, new, :m] = grown
            self.dist[rows, :m, new] = grown
        left = cap - bond
        self.atom_tok[rows, new] = tok[rows]
        self.parent[rows, new] = cur
        self.parent_order[rows, new] = bond
        self.free[rows, new] = left
        self.free[rows, cur] -= bond  # 0 for a first atom
        self.multi[rows, new] = bond >= 2
        self.multi[rows, cur] |= bond >= 2
        self.cur[rows] = new
        self.n[rows] = new + 1
        self.state[rows] = left
        self.ended[rows] = (left == 0) | (~first & (bond == 0))

    def _bond(self, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """Ring closure a-b in ``rows``: every distance shortened through the new bond."""
        if len(rows) == 0 or self.dist is None:
            return
        m = int(self.n[rows].max())
        d = self.dist[rows, :m, :m]
        i = torch.arange(len(rows), device=rows.device)
        da, db = d[i, a], d[i, b]  # [R, m]
        via = torch.minimum(da[:, :, None] + db[:, None, :], db[:, :, None] + da[:, None, :]) + 1
        self.dist[rows, :m, :m] = torch.minimum(d, via).clamp_(max=_FAR)

    def _record_ring(self, rows: torch.Tensor, ring: torch.Tensor) -> None:
        if len(rows) == 0:
            return
        slot = self.n_rings[rows]
        if bool((slot >= self.rings.shape[1]).any()):
            raise ValueError(f"more than {self.rings.shape[1]} ring closures: a row longer than the max_atoms "
                             "this derivation was started with")
        self.rings[rows, slot] = ring
        self.n_rings[rows] += 1

    def _close_valence(self, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor, asked: torch.Tensor) -> None:
        """A ring closure's bond as the decoder forms it at the end: the order asked capped by both
        atoms' free valence (0: dropped); a closure onto an existing bond raises its order."""
        if len(rows) == 0:
            return
        order = torch.minimum(asked, torch.minimum(self.free[rows, a], self.free[rows, b])).clamp(min=0)
        bonded = (self.dist[rows, a, b] == 1 if self.dist is not None
                  else (self.parent[rows, a] == b) | (self.parent[rows, b] == a))
        self.free[rows, a] -= order
        self.free[rows, b] -= order
        multi = (order >= 2) | (bonded & (order > 0))
        self.multi[rows, a] |= multi
        self.multi[rows, b] |= multi

    def _pop(self) -> None:
        """Close branches whose symbols are all read (not while an index is being read)."""
        for _ in range(self.max_depth):
            top = (self.depth - 1).clamp(min=0)
            done = (self.depth > 0) & (self.pend_left == 0) & (self.left.gather(1, top[:, None]).squeeze(1) <= 0)
            if not bool(done.any()):
                return
            rows = done.nonzero().squeeze(1)
            slot = top[rows]
            self.cur[rows] = self.saved_cur[rows, slot]
            self.state[rows] = self.saved_state[rows, slot]
            self.ended[rows] = self.saved_ended[rows, slot]
            self.depth[rows] -= 1

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current rows; the dropped rows must have ended).
        The state is compacted only once fewer than half of its rows are wanted: compacting copies
        the distance matrices, and a sampler drops a few rows at almost every step."""
        self.active = self.active[rows]
        if len(self.active) < len(self.n) // 2:
            keep = self.active
            gone = torch.ones(len(self.n), dtype=torch.bool, device=keep.device).index_fill_(0, keep, False)
            self._dropped.append(self._graph_rows(gone))
            self._sizes = None
            for name, value in list(vars(self).items()):
                if torch.is_tensor(value) and name != "active":
                    setattr(self, name, value[keep])
            self.active = torch.arange(len(keep), device=keep.device)

    _GRAPH = ("origin", "n", "atom_tok", "parent", "parent_order", "n_rings", "rings")

    def _graph_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k)[rows] for k in self._GRAPH}

    def graph(self) -> dict[str, torch.Tensor]:
        """The molecule as written in every row this derivation was started with, dropped ones
        included, in their first order: ``n`` [B] atoms, ``atom_tok``, ``parent``, ``parent_order``
        [B, max_atoms], ``n_rings`` [B] and ``rings`` [B, max_atoms // 2 + 1, 3] (``assemble.py``
        forms the bonds). Complete once each row has read its end token."""
        parts = self._dropped + [self._graph_rows(slice(None))]
        out = {k: torch.cat([p[k] for p in parts]) for k in self._GRAPH}
        order = out.pop("origin").argsort()
        return {k: v[order] for k, v in out.items()}

    def _wanted(self, value: torch.Tensor) -> torch.Tensor:
        return value if len(self.active) == len(self.n) else value[self.active]

    # ------------------------------------------------------------------ views
    def ring_sizes(self) -> torch.Tensor:
        """[B, 16] size of the ring each index value would close now (0: none; 2: the atoms are
        already bonded; ``_FAR`` + 1: not connected). Kept until the next token or ``keep``: a
        sampler's step reads them for the features and again for the mask."""
        if self._sizes is None:
            partner, valid = self._partners()
            size = self.dist.gather(1, self.cur[:, None, None].expand(-1, 1, self.dist.shape[2])).squeeze(1)
            size = size.gather(1, partner).long() + 1
            self._sizes = torch.where(valid, size, torch.zeros_like(size))
        return self._sizes

    def _partners(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 16] the atom each index value would close a ring to, and whether that is a ring
        (there is an atom and the partner is not the current atom itself)."""
        q = torch.arange(_BASE, device=self.cur.device)
        partner = (self.cur[:, None] - (q[None] + 1)).clamp(min=0)
        return partner, (self.n[:, None] > 0) & (partner != self.cur[:, None])

    def features(self, valence: bool = False) -> torch.Tensor:
        """[B, n_features(valence)] float: one-hot ring size per index value 0-11 (none, 2, 3, ...,
        7, 8+), the state (ended or no atom, 1, 2, 3, 4+), reading a branch / ring index, the
        innermost branch's remaining symbols (none, 1, ..., 7, 8+) and the branch depth (0, 1, 2,
        3+); with ``valence`` then, per index value 0-11, the partner atom's free valence (one-hot 0,
        1, 2, 3+; all zero where there is no partner) and whether it has a double or triple bond,
        and whether the current atom has one. The ones of :meth:`feature_index`."""
        return dense_features(self.feature_index(valence), valence)

    def feature_index(self, valence: bool = False) -> torch.Tensor:
        """[B, K] long: the columns of :meth:`features` that are 1, one per group (K = 17, or 42 with
        ``valence``); ``n_features(valence)`` where a group has none. A decoder sums its input weights'
        rows at these indices instead of multiplying the mostly-zero features."""
        off = n_features(valence)
        sizes = self.ring_sizes()[:, :RING_QS]
        qs = torch.arange(RING_QS, device=sizes.device)
        bins = torch.where(sizes == 0, torch.zeros_like(sizes), (sizes - 1).clamp(min=1, max=_SIZE_BINS - 1))
        state = torch.where(self.ended, torch.zeros_like(self.state), self.state.clamp(max=4))
        top = (self.depth - 1).clamp(min=0)
        left = torch.where(self.depth > 0, self.left.gather(1, top[:, None]).squeeze(1).clamp(min=1, max=8),
                           torch.zeros_like(self.depth))
        reading = torch.stack([(self.pend_left > 0) & (self.pend_kind == k) for k in (BRANCH, RING)], dim=1)
        at = RING_QS * _SIZE_BINS  # 96: state, 101: reading, 103: branch budget, 112: depth
        parts = [
            qs * _SIZE_BINS + bins,
            (at + state)[:, None],
            torch.where(reading, at + 5 + torch.arange(2, device=sizes.device), off),
            (at + 7 + left)[:, None],
            (at + 16 + self.depth.clamp(max=3))[:, None],
        ]
        if valence:
            partner, valid = self._partners()
            partner, valid = partner[:, :RING_QS], valid[:, :RING_QS]
            free = self.free.gather(1, partner).clamp(0, _FREE_BINS - 1)
            at = N_FEATURES  # 116: partner's free valence, 164: partner's multiple bond, 176: the current atom's
            multi = self.multi.gather(1, self.cur[:, None]).squeeze(1) & (self.n > 0)
            parts += [
                torch.where(valid, at + qs * _FREE_BINS + free, off),
                torch.where(self.multi.gather(1, partner) & valid, at + RING_QS * _FREE_BINS + qs, off),
                torch.where(multi, off - 1, off)[:, None],
            ]
        return self._wanted(torch.cat(parts, dim=1))

    def forbidden(self) -> torch.Tensor | None:
        """[B, V] True for the tokens that, read as the pending one-index ring token's size index,
        would close a ring of ``MAX_RING_SIZE`` or more atoms; None when no row reads such an index.
        A row where every value would is left free (the post-hoc rule has the last word)."""
        asking = (self.pend_left == 1) & (self.pend_n == 1) & (self.pend_kind == RING) & ~self.finished
        if len(self.active) < len(self.n):
            asking = asking & torch.zeros_like(asking).index_fill_(0, self.active, True)
        if not bool(asking.any()):
            return None
        large = self.ring_sizes() >= MAX_RING_SIZE  # [B, 16]
        large &= asking[:, None] & ~large.all(1, keepdim=True)
        if not bool(large.any()):
            return None
        mask = large.gather(1, self.tables["q"][None].expand(len(large), -1))
        mask[:, 0] = False  # the end token stays possible
        return self._wanted(mask)
