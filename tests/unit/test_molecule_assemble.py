"""Molecules assembled from the SELFIES derivation (design/domains/molecule/assemble.py) and the
large-ring screen built on it (decoding.may_have_large_rings): against the selfies decoder."""

import random

import selfies as sf
import torch
from rdkit import Chem, RDLogger

from design.domains.molecule.assemble import MolAssembler
from design.domains.molecule.decoding import large_rings, may_have_large_rings
from design.domains.molecule.domain import SANITIZED, MoleculeDomain
from design.domains.molecule.tokens import MoleculeTensors, Vocabulary, indices_to_selfies, selfies_to_indices


def _decoder_canonical(row, vocab):
    """Canonical SMILES of what the selfies decoder writes (None: empty or not sanitisable)."""
    smiles = sf.decoder(indices_to_selfies(row, vocab.tokens)) or ""
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles) if smiles else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    return Chem.MolToSmiles(mol) if mol is not None else None


def _random_rows(vocab, n, seed, rings=False):
    """Random token rows; with ``rings`` mostly carbon chains with ring tokens, whose size indices
    (any token) reach far back."""
    rng = random.Random(seed)
    ring = [vocab.index[t] for t in ("[Ring1]", "[=Ring1]", "[Ring2]")]
    rows = []
    for _ in range(n):
        length = rng.randrange(1, 45)
        row = []
        for _ in range(length):
            u = rng.random()
            if rings and u < 0.6:
                row.append(vocab.index["[C]"])
            elif rings and u < 0.75:
                row.append(rng.choice(ring))
            else:
                row.append(rng.randrange(1, len(vocab)))
        rows.append(row + [0] * (61 - length))
    return rows


def test_assembled_molecules_are_the_decoders(selfies_corpus):
    """Real rows and random token strings (skipped tokens, dropped and order-raising ring
    closures, strings ending inside an index): the same canonical SMILES as the selfies decoder's
    output parsed by RDKit, and the same verdict where that does not sanitise or is empty."""
    selfies, vocab, _ = selfies_corpus
    rows = ([selfies_to_indices(s, vocab.index, 60) for s in selfies] + _random_rows(vocab, 1000, 0)
            + _random_rows(vocab, 1000, 2, rings=True))
    assembler = MolAssembler(vocab.tokens)
    assert assembler.supported
    mols = assembler.molecules(torch.tensor(rows))
    for row, (mol, ok) in zip(rows, mols, strict=True):
        expected = _decoder_canonical(row, vocab)
        assert (Chem.MolToSmiles(mol) if ok else None) == expected, indices_to_selfies(row, vocab.tokens)
    assert sum(ok for _, ok in mols) > len(rows) // 2


def test_domain_decode_marks_sanitised_molecules(selfies_corpus):
    selfies, vocab, _ = selfies_corpus
    domain = MoleculeDomain()
    rows = [selfies_to_indices(s, vocab.index, 60) for s in selfies[:20]] + [[0] * 61]
    mols = domain.decode(MoleculeTensors(torch.tensor(rows), vocab.tokens))
    assert [m.GetIntProp(SANITIZED) for m in mols] == [1] * 20 + [0]
    assert [Chem.MolToSmiles(m) for m in mols[:20]] == [_decoder_canonical(r, vocab) for r in rows[:20]]


def test_stereo_vocabularies_decode_through_smiles():
    vocab = Vocabulary.fit(["[C][C@@H1][Branch1][C][O][N]", "[C][/C][=C][/C]"])
    assert not MolAssembler(vocab.tokens).supported
    rows = [selfies_to_indices(s, vocab.index, 10) for s in ("[C][C@@H1][Branch1][C][O][N]", "[C][/C][=C][/C]")]
    mols = MoleculeDomain().decode(MoleculeTensors(torch.tensor(rows), vocab.tokens))
    assert [Chem.MolToSmiles(m) for m in mols] == [_decoder_canonical(r, vocab) for r in rows]
    assert "@" in Chem.MolToSmiles(mols[0]) and "/" in Chem.MolToSmiles(mols[1])


def test_the_large_ring_screen_misses_no_large_ring(selfies_corpus):
    """Random rows rich in ring tokens: every molecule with a ring of 8+ atoms is flagged. Of real
    molecules (none has a large ring) only some fused systems are, whose first closure in reading
    order spans the whole system (naphthalene written around its rim: a 10-atom cycle first)."""
    selfies, vocab, _ = selfies_corpus
    rows = _random_rows(vocab, 1500, 1, rings=True)
    flags = may_have_large_rings(MoleculeTensors(torch.tensor(rows), vocab.tokens))
    large = [bool(large_rings(sf.decoder(indices_to_selfies(r, vocab.tokens)) or "", sanitize=False)) for r in rows]
    assert sum(large) >= 20
    assert all(f for f, big in zip(flags, large, strict=True) if big)
    assert sum(flags) < len(rows) // 2  # the screen spares most rows the exact rule
    real = [selfies_to_indices(s, vocab.index, 60) for s in selfies]
    assert sum(may_have_large_rings(MoleculeTensors(torch.tensor(real), vocab.tokens))) < len(real) // 5
