"""The SELFIES derivation (design/domains/molecule/grammar.py): against the selfies decoder, ring sizes, features, the sampler's mask."""

import random

import pytest
import selfies as sf
import torch
import torch.nn.functional as F
from rdkit import Chem

from design.config import ModelConfig
from design.domains.molecule.assemble import MolAssembler
from design.domains.molecule.chemistry import MAX_RING_SIZE
from design.domains.molecule.grammar import N_FEATURES, N_VALENCE_FEATURES, RING_QS, SelfiesGrammar
from design.domains.molecule.nets import TokenDecoderHead, TokenTransformerHead
from design.domains.molecule.tokens import Vocabulary, selfies_to_indices


@pytest.fixture(scope="module")
def corpus(selfies_corpus):
    return selfies_corpus


def _derive(grammar, rows):
    """Derivation after reading every row of equal-length token lists."""
    tokens = torch.tensor(rows)
    d = grammar.start(len(rows), tokens.shape[1] + 1)
    for t in range(tokens.shape[1]):
        d.step(tokens[:, t])
    return d


def _graph(d, r):
    n = int(d.n[r])
    bonded = d.dist[r, :n, :n] == 1
    return n, int(bonded.sum()) // 2, sorted(bonded.sum(1).tolist())


def _padded(rows):
    width = max(map(len, rows)) + 1
    return [row + [0] * (width - len(row)) for row in rows]


def test_derivation_writes_the_molecule_of_real_sequences(corpus):
    """The atoms and bonds derived from whole rows are those of the SELFIES decoder's molecule."""
    selfies, vocab, grammar = corpus
    d = _derive(grammar, [selfies_to_indices(s, vocab.index, 72) for s in selfies])
    for r, s in enumerate(selfies):
        mol = Chem.MolFromSmiles(sf.decoder(s))
        assert _graph(d, r) == (mol.GetNumAtoms(), mol.GetNumBonds(), sorted(a.GetDegree() for a in mol.GetAtoms())), s
        assert bool(d.finished[r]) and int(d.depth[r]) == 0


def test_derivation_tracks_free_valence_and_multiple_bonds(corpus):
    """After whole real rows, each atom's free valence is its hydrogen count (molecules without S or
    P, whose SELFIES capacity is their highest valence, nor hydrogens written in a token such as
    [NH1], which are not free valence) and the atoms marked with a double or triple bond are those
    of the kekulised molecule."""
    selfies, vocab, grammar = corpus
    d = _derive(grammar, [selfies_to_indices(s, vocab.index, 72) for s in selfies])
    compared = 0
    for r, s in enumerate(selfies):
        mol = Chem.MolFromSmiles(sf.decoder(s))
        Chem.Kekulize(mol, clearAromaticFlags=True)
        n = int(d.n[r])
        multi = sum(any(b.GetBondTypeAsDouble() >= 2 for b in a.GetBonds()) for a in mol.GetAtoms())
        assert int(d.multi[r, :n].sum()) == multi, s
        if any(a.GetSymbol() in ("S", "P") for a in mol.GetAtoms()) or "H" in s:
            continue
        assert sorted(d.free[r, :n].tolist()) == sorted(a.GetTotalNumHs() for a in mol.GetAtoms()), s
        compared += 1
    assert compared > 200


def test_derivation_of_random_sequences_matches_the_decoder(corpus):
    """Any token string (a sampler's): skipped branches and rings, chains ended by a full valence,
    nested branch budgets, a string that ends inside a size index: same atoms and bonds as the
    decoder writes (before it drops ring bonds for want of valence, so at least as many bonds)."""
    _, vocab, grammar = corpus
    rng = random.Random(0)
    rows = [[rng.randrange(1, len(vocab)) for _ in range(rng.randrange(2, 40))] for _ in range(500)]
    d = _derive(grammar, _padded(rows))
    for r, row in enumerate(rows):
        mol = Chem.MolFromSmiles(sf.decoder("".join(vocab.tokens[i] for i in row)), sanitize=False)
        n, bonds, _ = _graph(d, r)
        assert n == mol.GetNumAtoms() and bonds >= mol.GetNumBonds()


def _row(vocab, text):
    return [vocab.index[t] for t in sf.split_selfies(text)]


def test_ring_sizes_count_atoms_back_through_branches(corpus):
    _, vocab, grammar = corpus
    prefixes = ["[C][=C][C][=C][C][=C][Ring1]",  # benzene up to its ring token: Q = 4 closes a 6-ring
                "[C][C][Branch1][Ring1][C][C][C][C][C][C][Ring1]"]  # a 2-atom branch on the second atom
    d = _derive(grammar, _padded([_row(vocab, p) for p in prefixes]))
    sizes = d.ring_sizes()
    assert d.cur.tolist() == [5, 7] and d.n.tolist() == [6, 8]
    assert sizes[0, :5].tolist() == [2, 3, 4, 5, 6]  # Q = 0 is the neighbour: already bonded
    # Q + 1 atoms back from atom 7: 6, 5, 4 (along the chain), then the branch atoms 3 and 2 (the
    # string wrote them before atom 4; reached through atom 1), then atoms 1 and 0
    assert sizes[1, :7].tolist() == [2, 3, 4, 7, 6, 5, 6]
    # these prefixes have not ended: the padding token ends them, after which nothing is asked
    assert d.finished.all() and d.forbidden() is None


def test_forbidden_is_exactly_the_macrocycle_indices(corpus):
    _, vocab, grammar = corpus
    rows = [_row(vocab, "[C]" * 12 + "[Ring1]"),  # a 12-atom chain: index Q closes a min(Q + 2, 12)-ring
            _row(vocab, "[C]" * 13),  # no index asked
            _row(vocab, "[C]" * 11 + "[Ring2]" + "[C]")]  # a two-index ring token: left alone
    tokens = torch.tensor(rows)
    d = grammar.start(3, 20)
    for t in range(tokens.shape[1]):
        d.step(tokens[:, t])
    d_ring2 = d.pend_left.tolist()
    mask = d.forbidden()
    assert mask is not None and not mask[1].any() and not mask[2].any() and d_ring2 == [1, 0, 1]
    q = grammar.q
    for tok in range(1, len(vocab)):
        assert bool(mask[0, tok]) == (min(int(q[tok]) + 2, 12) >= MAX_RING_SIZE), vocab.tokens[tok]
    assert not mask[0, 0]


def test_features_describe_the_derivation(corpus):
    _, vocab, grammar = corpus
    tokens = torch.tensor([_row(vocab, "[C][C][Branch1][Ring1][C][C][C][=O]")])
    feats = grammar.run(tokens)  # before each position
    assert feats.shape == (1, tokens.shape[1], N_FEATURES)
    state = feats[0, :, RING_QS * 8 : RING_QS * 8 + 5].argmax(1).tolist()
    reading = feats[0, :, RING_QS * 8 + 5 : RING_QS * 8 + 7].tolist()
    budget = feats[0, :, RING_QS * 8 + 7 : RING_QS * 8 + 16].argmax(1).tolist()
    # before: [C] no atom | [C] C has 4 | [Branch1] 3 | index: reading a branch index | branch of 2
    # symbols, 2 left | 1 left | back on the second carbon, 3 - 1 = 2 free | the new carbon has 3
    assert state == [0, 4, 3, 3, 1, 3, 2, 3]
    assert reading[3] == [1.0, 0.0] and sum(map(sum, reading)) == 1.0
    assert budget == [0, 0, 0, 0, 2, 1, 0, 0]


def test_valence_features_describe_the_ring_partners(corpus):
    """Benzene's ring token: each index value's partner atom, its free valence and double bond."""
    _, vocab, grammar = corpus
    tokens = torch.tensor([_row(vocab, "[C][=C][C][=C][C][=C][Ring1][=Branch1]")])
    feats = grammar.run(tokens, valence=True)
    assert feats.shape == (1, tokens.shape[1], N_FEATURES + N_VALENCE_FEATURES)
    assert torch.equal(feats[..., :N_FEATURES], grammar.run(tokens))
    at = feats[0, 7, N_FEATURES:]  # reading the ring's index: the current atom is the sixth carbon
    free = at[: RING_QS * 4].view(RING_QS, 4).argmax(1).tolist()
    multi = at[RING_QS * 4 : RING_QS * 5].tolist()
    # index 0 -> atom 4 (bonds: single, double): 1 free; 1 -> atom 3 (double, single): 1; 2 -> atom 2: 1;
    # 3 -> atom 1: 1; 4 and above -> atom 0 (one double bond): 2 free
    assert free == [1, 1, 1, 1] + [2] * (RING_QS - 4)
    assert multi == [1.0] * RING_QS and at[-1] == 1.0
    first = feats[0, 1, N_FEATURES:]  # after the first atom: no partner for any index
    assert first[: RING_QS * 5].sum() == 0 and first[-1] == 0


@pytest.mark.parametrize("decoder", ["gru", "transformer"])
@pytest.mark.parametrize("features", [False, True])
def test_constrained_sampling_never_writes_a_ring_token_macrocycle(corpus, decoder, features):
    """A decoder biased toward far-reaching ring indices writes macrocycles; constrained, no
    one-index ring token of a sample closes a ring of MAX_RING_SIZE or more atoms."""
    _, vocab, grammar = corpus
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=8, hidden=32, site_dim=16, heads=2, decoder_layers=1, decoder=decoder,
                      grammar_features=features)
    cls = TokenDecoderHead if decoder == "gru" else TokenTransformerHead
    head = cls(cfg, len(vocab), 40, grammar=grammar)
    with torch.no_grad():  # long carbon chains with ring tokens, whose size indices reach far back
        for tok, bias in (("[C]", 4.0), ("[Ring1]", 2.0), ("[=C]", 3.5), ("[end]", -6.0)):
            head.out.bias[vocab.index[tok]] += bias
    h = torch.randn(600, 32)

    def closures(constrained):
        with torch.no_grad():
            batch = head.sample({"h": h}, temperature=1.5, generator=torch.Generator().manual_seed(1),
                                constrained=constrained)
        tokens = batch.tokens.argmax(-1)
        d = grammar.start(len(tokens), tokens.shape[1] + 1)
        sizes = []
        for t in range(tokens.shape[1]):
            asking = ((d.pend_left == 1) & (d.pend_n == 1) & (d.pend_kind == 3) & ~d.finished & (tokens[:, t] != 0))
            if asking.any():
                ring = d.ring_sizes()[asking].gather(1, grammar.q[tokens[asking, t]][:, None]).squeeze(1)
                sizes += ring.tolist()
            d.step(tokens[:, t])
        return sizes

    free, ruled = closures(False), closures(True)
    assert sum(s >= MAX_RING_SIZE for s in free) >= 10
    assert ruled and all(s < MAX_RING_SIZE for s in ruled)


@pytest.mark.parametrize("features", [False, True])
def test_the_samplers_graphs_are_the_assemblers(corpus, features, monkeypatch):
    """The graphs a hard sampler hands on with its batch (``MoleculeBatch.graph``; rows dropped as
    they end, rows cut at max_tokens) are those the assembler derives from the tokens alone."""
    _, vocab, grammar = corpus
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=8, hidden=32, site_dim=16, decoder_layers=1, grammar_features=features)
    head = TokenDecoderHead(cfg, len(vocab), 40, grammar=grammar)
    with torch.no_grad():
        for tok, bias in (("[C]", 2.0), ("[Ring1]", 1.5), ("[Branch1]", 1.0), ("[end]", -1.5)):
            head.out.bias[vocab.index[tok]] += bias
        batch = head.sample({"h": torch.randn(500, 32)}, temperature=1.5, generator=torch.Generator().manual_seed(2),
                            constrained=True)
    t = batch.to_tensors(vocab.tokens)
    lengths = t.lengths()
    assert (lengths == 40).sum() >= 10 and (lengths < 20).sum() >= 10
    assert torch.equal(t.tokens, batch.tokens.argmax(-1))  # the lazy one-hot is the same rows
    fresh = MolAssembler(vocab.tokens).written(t.tokens)
    handed = MolAssembler(vocab.tokens)
    handed.remember(t.tokens, batch.graph)
    monkeypatch.setattr(handed, "_derive", lambda tokens: pytest.fail("derived again"))
    for a, b in zip(handed.written(t.tokens), fresh, strict=True):
        assert (a.atoms, sorted(a.bonds), a.ring_sizes) == (b.atoms, sorted(b.bonds), b.ring_sizes)
    assert sum(len(w.ring_sizes) > 0 for w in fresh) >= 50


@pytest.mark.parametrize("valence", [False, True])
def test_teacher_forced_features_are_the_samplers(valence):
    """With grammar features, the sampler's step (features fed incrementally) gives the
    teacher-forced logits, so sampling draws from the distribution trained."""
    vocab = Vocabulary.fit(["[C][C][Branch1][C][O][N][=C][Ring1][=Branch1]", "[C][=C][C][=C][C][=C][Ring1][=Branch1]"])
    grammar = SelfiesGrammar(vocab.tokens)
    for decoder in ("gru", "transformer"):
        torch.manual_seed(0)
        cfg = ModelConfig(latent_dim=8, hidden=32, site_dim=16, heads=2, decoder_layers=2, decoder=decoder,
                          grammar_features=True, grammar_valence=valence)
        head = (TokenDecoderHead if decoder == "gru" else TokenTransformerHead)(cfg, len(vocab), 12, grammar=grammar)
        h = torch.randn(4, 32)
        tokens = torch.randint(1, len(vocab), (4, 9))
        with torch.no_grad():
            expected = head.logits({"h": h}, tokens)
        for soft in (False, True):  # hard token indices (sampling) and one-hot floats (the autograd sampler)
            with torch.no_grad():
                d = grammar.start(4, 13)
                state = head._begin(h, head._features(d))
                steps = []
                for t in range(tokens.shape[1]):
                    steps.append(head._step_logits(state))
                    d.step(tokens[:, t])
                    fed = F.one_hot(tokens[:, t], len(vocab)).float() if soft else tokens[:, t]
                    head._feed(state, fed, head._features(d))
            assert torch.allclose(torch.stack(steps, 1), expected, atol=1e-5), (decoder, soft)


def test_dropping_finished_rows_keeps_the_others_state(corpus):
    """``keep`` (as the sampler drops finished rows, compacting only now and then) leaves every
    remaining row's features and mask as a derivation of that row alone gives them."""
    selfies, vocab, grammar = corpus
    rows = [selfies_to_indices(s, vocab.index, 72) for s in selfies[:40]]
    tokens = torch.tensor(rows)
    d = grammar.start(len(rows), 73)
    alone = grammar.start(len(rows), 73)
    kept = torch.arange(len(rows))
    for t in range(tokens.shape[1]):
        d.step(tokens[kept, t])
        alone.step(tokens[:, t])
        going = (tokens[kept, t] != 0).nonzero().squeeze(1)
        if len(going) == 0:
            break
        if len(going) < len(kept):
            kept = kept[going]
            d.keep(going)
        assert torch.equal(d.features(True), alone.features(True)[kept])
        mask, full = d.forbidden(), alone.forbidden()
        assert (mask is None and (full is None or not full[kept].any())) or torch.equal(mask, full[kept])
    assert len(kept) < len(rows) // 2  # the compaction ran
