"""RDKit molecules straight from the SELFIES derivation of token rows, without writing SMILES.

The ``selfies`` decoder derives a molecular graph from a string and writes it as SMILES, which
RDKit then parses again: in pure Python, about 0.2 ms a molecule, plus 0.1 ms to parse. The
vectorised :class:`~design.domains.molecule.grammar.Derivation` already follows the same rules
for a whole batch in tensors and records the graph as written (each atom's token, the atom it
bonded to and the bond's order, and the ring closures in reading order). :class:`MolAssembler`
adds what the decoder does at the end, forming the ring closures in reading order, each with the
order asked capped by both atoms' free valence (capacity less the bond orders so far; none left:
the closure is dropped; onto an existing bond: that bond's order rises, at most to triple), then
builds the RDKit molecule atom by atom and sanitises it. The molecule is the one the decoder's
SMILES would give (same canonical SMILES, tested on real and random rows); its atoms are in
reading order.

Vocabularies with stereo or isotope tokens (``[C@@H1]``, ``[/C]``, ``[13C]``) or atoms without
bonding capacity are not assembled (``MolAssembler.supported`` is False): the domain decodes
those through SMILES.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rdkit import Chem
from selfies.grammar_rules import process_atom_symbol

from design.domains.molecule.chemistry import MAX_RING_SIZE
from design.domains.molecule.grammar import SelfiesGrammar

_BOND = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
CHUNK = 4096  # rows derived at once
CACHE = 1 << 16  # graphs kept (each a few hundred bytes)


@dataclass
class Written:
    """One row's graph as the decoder forms it: atom tokens, bonds (i, j, order) and, per ring
    closure formed as a new bond in reading order, the size of the smallest ring it closes over the
    chain bonds and the closures formed before it (exact below ``MolAssembler.ring_limit``; at or
    above it, some size at least the limit)."""

    atoms: list[int]
    bonds: list[tuple[int, int, int]]
    ring_sizes: list[int]


class MolAssembler:
    """Token rows of a vocabulary -> RDKit molecules (see module docstring)."""

    def __init__(self, vocab: tuple[str, ...], grammar: SelfiesGrammar | None = None,
                 ring_limit: int = MAX_RING_SIZE):
        self.vocab = vocab
        self.ring_limit = ring_limit
        self._cache: dict[bytes, Written] = {}
        self.grammar = grammar or SelfiesGrammar(vocab)
        self.cap = self.grammar.cap.tolist()
        self.protos: list[Chem.Atom | None] = []
        self.supported = True
        for i, tok in enumerate(vocab):
            atom = process_atom_symbol(tok) if i and int(self.grammar.kind[i]) == 1 else None
            if atom is None:
                self.protos.append(None)
                continue
            (_, stereo), a = atom
            if stereo is not None or a.chirality is not None or a.isotope is not None or self.cap[i] <= 0:
                self.supported = False
            proto = Chem.Atom(a.element)
            proto.SetFormalCharge(a.charge)
            if (a.isotope, a.chirality, a.h_count, a.charge) != (None, None, None, 0):  # a bracket atom
                proto.SetNoImplicit(True)
                proto.SetNumExplicitHs(a.h_count or 0)
            self.protos.append(proto)

    # ------------------------------------------------------------------ graphs
    def written(self, tokens: torch.Tensor) -> list[Written]:
        """The graph of each row of hard tokens [N, T] (rows end at their first end token). Graphs are
        kept by row (up to ``CACHE``, then the cache starts over): sampling screens a batch for the
        ring rule and decoding then reads the same rows."""
        keys = _keys(tokens)
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            self._keep([keys[i] for i in missing], self._derive(tokens.cpu()[missing]))
        return [self._cache[k] for k in keys]

    def remember(self, tokens: torch.Tensor, graph: dict[str, torch.Tensor]) -> None:
        """Keep the graphs of rows [N, T] that a derivation already followed (``Derivation.graph``
        of a sampler's, whose rows have all read their end token), so :meth:`written` need not
        derive them again."""
        self._keep(_keys(tokens), self._form_graph({k: v.cpu() for k, v in graph.items()}))

    def keep(self, tokens: torch.Tensor, graphs: list[Written]) -> None:
        """Keep the graphs of rows [N, T] formed elsewhere (another process's :meth:`written`)."""
        if len(graphs) != len(tokens):
            raise ValueError(f"{len(graphs)} graphs for {len(tokens)} rows")
        self._keep(_keys(tokens), graphs)

    def _keep(self, keys: list[bytes], graphs: list[Written]) -> None:
        if len(self._cache) + len(keys) > CACHE:
            self._cache.clear()
        self._cache.update(zip(keys, graphs, strict=True))

    def _derive(self, tokens: torch.Tensor) -> list[Written]:
        out: list[Written] = []
        for start in range(0, len(tokens), CHUNK):
            part = tokens[start : start + CHUNK]
            d = self.grammar.start(len(part), part.shape[1] + 1, distances=False)
            for t in range(part.shape[1]):
                d.step(part[:, t])
                if bool(d.finished.all()):
                    break
            out += self._form_graph(d.graph())
        return out

    def _form_graph(self, g: dict[str, torch.Tensor]) -> list[Written]:
        if not len(g["n"]):
            return []
        atoms, rings = int(g["n"].max()), int(g["n_rings"].max())  # only what was written is read back
        return [self._form(*row) for row in zip(g["n"].tolist(), g["atom_tok"][:, :atoms].tolist(),
                                                g["parent"][:, :atoms].tolist(), g["parent_order"][:, :atoms].tolist(),
                                                g["n_rings"].tolist(), g["rings"][:, :rings].tolist(), strict=True)]

    def _form(self, n: int, toks: list[int], parents: list[int], orders: list[int], n_rings: int,
              rings: list[list[int]]) -> Written:
        """The decoder's bonds: the chain bonds, then each ring closure formed in reading order."""
        parents = parents[:n]
        bonds: dict[tuple[int, int], int] = {}
        count = [0] * n
        depth = [0] * n  # along the chain bonds; an atom's parent comes before it
        for i in range(1, n):
            o, p = orders[i], parents[i]
            if o > 0:
                bonds[(p, i)] = o
                count[i] += o
                count[p] += o
            depth[i] = depth[p] + 1
        sizes: list[int] = []
        closed: list[tuple[int, int]] = []
        for a, b, asked in rings[:n_rings]:
            free_a, free_b = self.cap[toks[a]] - count[a], self.cap[toks[b]] - count[b]
            if free_a <= 0 or free_b <= 0:
                continue  # dropped
            o = min(asked, free_a, free_b)
            key = (a, b) if a < b else (b, a)
            old = bonds.get(key, 0)
            new = min(old + o, 3) if old else o
            bonds[key] = new
            count[a] += new - old
            count[b] += new - old
            if not old:
                sizes.append(self._ring(a, b, parents, depth, closed))
                closed.append((a, b))
        return Written(toks[:n], [(i, j, o) for (i, j), o in bonds.items()], sizes)

    def _ring(self, a: int, b: int, parents: list[int], depth: list[int], closed: list[tuple[int, int]]) -> int:
        """Size of the smallest ring a new bond a-b closes over the chain bonds and the ring bonds
        ``closed`` before it: the chain path when that is short, else a search of the graph (as far
        as ``ring_limit`` needs)."""
        size = _tree_path(a, b, parents, depth) + 1
        if size < self.ring_limit or not closed:
            return size
        seen, frontier = {a}, [a]
        for step in range(1, self.ring_limit - 1):  # bonds from a
            grown = []
            for x in frontier:
                for y in _neighbours(x, parents, closed):
                    if y not in seen:
                        if y == b:
                            return step + 1
                        seen.add(y)
                        grown.append(y)
            frontier = grown
        return size

    # ------------------------------------------------------------------ molecules
    def molecule(self, w: Written) -> tuple[Chem.RWMol, bool]:
        """The RDKit molecule of a graph and whether it sanitised (if not, or if it has no atoms, it is
        returned as built and False)."""
        mol = Chem.RWMol()  # kept editable: its read-only copy (``GetMol``) cost 20 of 130 us a molecule
        for tok in w.atoms:
            mol.AddAtom(self.protos[tok])
        for i, j, o in w.bonds:
            mol.AddBond(i, j, _BOND[o])
        if not w.atoms:
            return mol, False
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # RDKit raises its own sanitisation exceptions
            return mol, False
        return mol, True

    def molecules(self, tokens: torch.Tensor) -> list[tuple[Chem.Mol, bool]]:
        if not self.supported:
            raise ValueError("this vocabulary has stereo, isotope or zero-capacity atom tokens; "
                             "decode it through SMILES (MoleculeDomain.decode does)")
        return [self.molecule(w) for w in self.written(tokens)]


def _keys(tokens: torch.Tensor) -> list[bytes]:
    return [row.tobytes() for row in tokens.cpu().numpy()]


def _neighbours(x: int, parents: list[int], closed: list[tuple[int, int]]) -> list[int]:
    out = [i for i in range(x + 1, len(parents)) if parents[i] == x]
    if x:
        out.append(parents[x])
    return out + [q for p, q in closed if p == x] + [p for p, q in closed if q == x]


def _tree_path(a: int, b: int, parents: list[int], depth: list[int]) -> int:
    """Bonds between atoms a and b along the chain bonds (up to their last common ancestor)."""
    steps = 0
    while a != b:
        if depth[a] < depth[b]:
            a, b = b, a
        a = parents[a]
        steps += 1
    return steps
