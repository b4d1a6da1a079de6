"""SELFIES token sequences: the tensor form of molecules and its round trip to SMILES / RDKit.

A molecule is a SELFIES string (every token sequence decodes to a valence-valid molecule) split
into at most ``L`` tokens, stored as vocabulary indices. Index 0 is the end token: a sequence ends
at its first 0 and every position after it is 0, so a tensor always has ``L + 1`` columns.

Two forms:

* :class:`MoleculeTensors` (storage, hard): ``tokens`` [N, L + 1] int64 vocabulary indices, and
  the ``vocab`` they index; for training, optionally ``features``, the decoder's teacher-forced
  derivation features worked out once (``_TokenHead.with_teacher_features``).
* :class:`MoleculeBatch` (model input, soft): ``tokens`` [B, L + 1, V] token probabilities
  (one-hot for real molecules and hard samples, straight-through Gumbel samples for generated ones
  under autograd).

The vocabulary is a tuple of SELFIES tokens, index 0 = :data:`END`; it is fitted on the training
corpus (``Vocabulary.fit``) and saved with the generator.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import selfies as sf
import torch
from rdkit import Chem

END = "[end]"


class EncodeError(ValueError):
    """A molecule that does not fit the tensor form (the message says why)."""


@dataclass(frozen=True)
class Vocabulary:
    """SELFIES tokens by index; ``tokens[0]`` is the end token."""

    tokens: tuple[str, ...]

    @classmethod
    def fit(cls, selfies_strings: Iterable[str]) -> Vocabulary:
        """The tokens that occur in ``selfies_strings`` in a fixed (sorted) order after the end token."""
        seen: set[str] = set()
        for s in selfies_strings:
            seen.update(sf.split_selfies(s))
        return cls((END, *sorted(seen)))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


ROOTS = ("canonical", "no_terminal_multiple")


def smiles_to_selfies(smiles: str, root: str = "canonical") -> str:
    """SMILES -> SELFIES (kekulised by the encoder) starting where ``root`` says; raises :class:`EncodeError`."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise EncodeError("SMILES does not parse")
    return mol_to_selfies(mol, root)[1]


def root_atom(mol: Chem.Mol, root: str = "canonical") -> int | None:
    """The atom a molecule's string starts at: ``None`` for RDKit's canonical choice, or with
    ``"no_terminal_multiple"`` the atom of lowest canonical rank that is not a terminal atom bound by a
    double or triple bond (the O of a carbonyl, the N of a nitrile; None when that is the canonical root
    already or no atom qualifies). A string that opens on ``O=C`` needs a branch right after the carbon
    or the carbonyl ends up an aldehyde; started elsewhere the carbonyl is a branch off a chain."""
    if root == "canonical":
        return None
    if root != "no_terminal_multiple":
        raise ValueError(f"molecule.root={root!r} is not one of {list(ROOTS)}")
    ranks = list(Chem.CanonicalRankAtoms(mol))
    order = sorted(range(mol.GetNumAtoms()), key=ranks.__getitem__)
    for i in order:
        atom = mol.GetAtomWithIdx(i)
        bonds = atom.GetBonds()
        if not (len(bonds) == 1 and bonds[0].GetBondTypeAsDouble() >= 2):
            return None if i == order[0] else i
    return None


def mol_to_selfies(mol: Chem.Mol, root: str = "canonical") -> tuple[str, str]:
    """(canonical SMILES, SELFIES) of a parsed molecule, its SELFIES written from :func:`root_atom`;
    raises :class:`EncodeError`."""
    if len(Chem.GetMolFrags(mol)) > 1:
        raise EncodeError("more than one fragment")
    canonical = Chem.MolToSmiles(mol)
    start = root_atom(mol, root)
    written = canonical if start is None else Chem.MolToSmiles(mol, rootedAtAtom=start)
    try:
        return canonical, sf.encoder(written)
    except sf.EncoderError as err:
        raise EncodeError(f"SELFIES encoder refused it ({str(err).splitlines()[0]})") from None


def selfies_to_indices(selfies: str, vocab: dict[str, int], max_tokens: int) -> list[int]:
    """One SELFIES string -> ``max_tokens + 1`` indices (end-padded); raises :class:`EncodeError`."""
    toks = list(sf.split_selfies(selfies))
    if not toks:
        raise EncodeError("empty SELFIES")
    if len(toks) > max_tokens:
        raise EncodeError(f"more than max_tokens={max_tokens} SELFIES tokens")
    try:
        idx = [vocab[t] for t in toks]
    except KeyError as err:
        raise EncodeError(f"token {err.args[0]} not in the vocabulary") from None
    return idx + [0] * (max_tokens + 1 - len(idx))


def indices_to_selfies(row: Sequence[int], tokens: Sequence[str]) -> str:
    """Vocabulary indices up to the first end token -> SELFIES string."""
    out = []
    for i in row:
        if i == 0:
            break
        out.append(tokens[i])
    return "".join(out)


@functools.lru_cache(maxsize=1 << 16)
def selfies_to_smiles(selfies: str) -> str:
    """SELFIES -> SMILES as the SELFIES decoder writes it ("" for an empty molecule). Cached: the
    decoding rules and the decode step read the same sequences, and the decoder is the slowest
    part of turning samples into molecules."""
    return sf.decoder(selfies) or ""


@dataclass
class MoleculeTensors:
    """Hard tensor form of N molecules (see module docstring)."""

    tokens: torch.Tensor  # [N, L + 1] int64
    vocab: tuple[str, ...]  # SELFIES token of each index (index 0: the end token)
    # [N, L + 1, K] uint8: ``Derivation.feature_index`` before each position (teacher forcing), or None
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, idx: torch.Tensor | slice) -> MoleculeTensors:
        return MoleculeTensors(self.tokens[idx], self.vocab, None if self.features is None else self.features[idx])

    def to(self, device: torch.device | str) -> MoleculeTensors:
        return MoleculeTensors(self.tokens.to(device), self.vocab,
                               None if self.features is None else self.features.to(device))

    def lengths(self) -> torch.Tensor:
        """[N] number of tokens before the end token."""
        return (self.tokens != 0).long().cumprod(1).sum(1)

    def to_batch(self, vocab_size: int) -> MoleculeBatch:
        return MoleculeBatch(torch.nn.functional.one_hot(self.tokens.long(), vocab_size).float())


class MoleculeBatch:
    """Token sequences [B, L + 1, V]: probabilities over the vocabulary per position, or, made by
    :meth:`hard`, one-hot rows kept as their indices until ``tokens`` is first read. A sampler's
    batch of 4,096 rows took 0.05 s to build its one-hot and read its argmax back (26 tokens, 2
    threads), which turning samples into molecules never needs; the discriminator reads ``tokens``."""

    def __init__(self, tokens: torch.Tensor):
        self._tokens: torch.Tensor | None = tokens
        self._index: torch.Tensor | None = None  # set by ``hard``, with ``_vocab_size`` and ``_dtype``
        self.graph: dict[str, torch.Tensor] | None = None

    @classmethod
    def hard(cls, index: torch.Tensor, vocab_size: int, dtype: torch.dtype = torch.float32,
             graph: dict[str, torch.Tensor] | None = None) -> MoleculeBatch:
        """One-hot rows of ``index`` [B, L + 1] (every position after a row's first end token 0);
        ``graph``: the rows' molecules as a derivation wrote them (``Derivation.graph``), if one did."""
        batch = cls.__new__(cls)
        batch._tokens, batch._index, batch._vocab_size, batch._dtype = None, index, vocab_size, dtype
        batch.graph = graph
        return batch

    @property
    def tokens(self) -> torch.Tensor:
        if self._tokens is None:
            self._tokens = torch.nn.functional.one_hot(self._index, self._vocab_size).to(self._dtype)
        return self._tokens

    def __len__(self) -> int:
        return (self._index if self._tokens is None else self._tokens).shape[0]

    def detach(self) -> MoleculeBatch:
        return self if self._index is not None else MoleculeBatch(self.tokens.detach())

    def to_tensors(self, vocab: tuple[str, ...]) -> MoleculeTensors:
        if self._index is not None:
            return MoleculeTensors(self._index, vocab)
        idx = self.tokens.argmax(-1)
        # everything after the first end token is end: keeps the storage invariant
        alive = (idx != 0).long().cumprod(1).bool()
        return MoleculeTensors(idx.masked_fill(~alive, 0), vocab)

    @property
    def alive(self) -> torch.Tensor:
        """[B, L + 1] probability that a position is still inside the molecule (before the end
        token), differentiable: the product of (1 - p(end)) over this and earlier positions."""
        return torch.cumprod(1.0 - self.tokens[..., 0], dim=1)
