"""The molecule domain: SMILES -> SELFIES tensors -> SMILES on real MOSES molecules, files, config."""

import pandas as pd
import pytest
import torch
from rdkit import Chem

from design.config import ConfigError, MoleculeConfig, config_from_dict, generator_key
from design.data.molecules import DatasetFormatError, load_molecule_dataset
from design.data.sources import resolve
from design.domains import build_domain
from design.domains.base import Candidate
from design.domains.molecule import MoleculeDomain
from design.domains.molecule.tokens import MoleculeBatch, indices_to_selfies, selfies_to_smiles

from testkit import MOLECULES_TEST


@pytest.fixture(scope="module")
def moses():
    return load_molecule_dataset(MOLECULES_TEST, ["logp"], max_tokens=72, limit=300, subsample="first")


@pytest.fixture(scope="module")
def domain(moses):
    dom = MoleculeDomain()
    dom.fit_state(moses)
    return dom


def test_round_trip_real_moses_molecules(moses, domain):
    raw = pd.read_csv(resolve(MOLECULES_TEST), nrows=300)["SMILES"].tolist()
    assert len(moses) == 300 and not moses.skipped
    assert moses.tensors.tokens.shape == (300, 73)
    # tensors -> SMILES gives back every molecule (canonical SMILES compared)
    back = [Chem.MolToSmiles(m) for m in domain.decode(moses.tensors)]
    assert back == [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in raw] == moses.ids
    # SMILES -> tensors by the domain gives the same tensors as the data loader
    assert torch.equal(domain.encode(raw).tokens, moses.tensors.tokens)
    # the soft form turns back into the same hard tensors
    assert torch.equal(domain.batch_to_tensors(domain.real_batch(moses.tensors)).tokens, moses.tensors.tokens)


def test_selfies_rooted_off_terminal_multiple_bonds(moses):
    """molecule.root: no_terminal_multiple writes the same molecules, none opening on a terminal atom's
    double or triple bond (O=C..., N#C...), and changes only the strings that did; its cache and generator
    key are its own, and the default's key is what it was before the option."""
    rooted = load_molecule_dataset(MOLECULES_TEST, ["logp"], max_tokens=72, limit=300, subsample="first",
                                   root="no_terminal_multiple")
    assert rooted.ids == moses.ids and not rooted.skipped
    dom = MoleculeDomain(MoleculeConfig(root="no_terminal_multiple"))
    dom.fit_state(rooted)
    assert [Chem.MolToSmiles(m) for m in dom.decode(rooted.tensors)] == moses.ids
    assert torch.equal(dom.encode(moses.ids).tokens, rooted.tensors.tokens)

    def opens_on_terminal_multiple(tensors):
        out = []
        for row in tensors.tokens.tolist():  # the SELFIES decoder keeps the string's atom order
            first = Chem.MolFromSmiles(selfies_to_smiles(indices_to_selfies(row, tensors.vocab))).GetAtomWithIdx(0)
            out.append(first.GetDegree() == 1 and first.GetBonds()[0].GetBondTypeAsDouble() >= 2)
        return out

    opens = opens_on_terminal_multiple(moses.tensors)
    assert 20 < sum(opens) < 150  # MOSES: about one molecule in seven opens on O=C
    assert not any(opens_on_terminal_multiple(rooted.tensors))
    strings = [[indices_to_selfies(row, t.vocab) for row in t.tokens.tolist()] for t in (moses.tensors, rooted.tensors)]
    assert all(b == a for b, a, o in zip(*strings, opens, strict=True) if not o)
    assert not any(b == a for b, a, o in zip(*strings, opens, strict=True) if o)
    base = {"domain": "molecule", "data": {"train": "molecules/moses/train.csv.gz"}}
    assert generator_key(config_from_dict(base)) == generator_key(
        config_from_dict({**base, "molecule": {"root": "canonical"}}))
    assert generator_key(config_from_dict(base)) != generator_key(
        config_from_dict({**base, "molecule": {"root": "no_terminal_multiple"}}))
    with pytest.raises(ConfigError, match="root"):
        config_from_dict({**base, "molecule": {"root": "random"}})


def test_logp_labels_match_rdkit(moses):
    from rdkit.Chem import Crippen

    want = [Crippen.MolLogP(Chem.MolFromSmiles(s)) for s in moses.ids[:20]]
    assert moses.y[:20, 0].tolist() == pytest.approx(want, abs=1e-4)


def test_bad_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.smi"
    long_chain = "C" * 80
    path.write_text("CCO\nnot_a_smiles\nCC.O\n" + long_chain + "\nc1ccccc1\n")
    ds = load_molecule_dataset(str(path), ["logp"], max_tokens=40)
    assert ds.ids == ["CCO", "c1ccccc1"]
    assert ds.skipped == {"SMILES does not parse": 1, "more than one fragment": 1,
                          "more than max_tokens=40 SELFIES tokens": 1}


def test_encoding_on_worker_processes_matches_one_process():
    """Large corpora are encoded in chunks on a process pool: the same rows, skips and labels."""
    import functools

    from design.data.molecules import _encode_chunk
    from design.parallel import chunked_map

    items = [("CCO", [None]), ("not_a_smiles", [None]), ("c1ccccc1O", [2.5]), ("CC(=O)Nc1ccccc1", [None]),
             ("CC.O", [None]), ("C1CCCCC1N", [float("nan")])] * 3
    fn = functools.partial(_encode_chunk, properties=["logp"], max_tokens=40)
    pooled = chunked_map(fn, items, workers=2, chunk=4)
    assert pooled == fn(items)
    assert pooled[1] == "SMILES does not parse" and pooled[2][2] == [2.5] and pooled[5] == "property not finite"


def test_csv_without_smiles_column_is_an_error_that_names_the_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("mol,score\nCCO,1\n")
    with pytest.raises(DatasetFormatError, match=r"no SMILES column.*\['mol', 'score'\]"):
        load_molecule_dataset(str(path), ["logp"], max_tokens=40)


def test_unknown_property_names_the_fix(tmp_path):
    path = tmp_path / "x.smi"
    path.write_text("CCO\n")
    with pytest.raises(ValueError, match=r"unknown molecular property 'pic50'.*data.properties"):
        load_molecule_dataset(str(path), ["pic50"], max_tokens=40)


def test_empty_token_rows_and_end_padding():
    batch = MoleculeBatch(torch.nn.functional.one_hot(torch.tensor([[1, 0, 2, 0]]), 3).float())
    t = batch.to_tensors(("[end]", "[C]", "[O]"))
    assert t.tokens.tolist() == [[1, 0, 0, 0]]  # nothing survives after the first end token
    assert MoleculeDomain.smiles(t) == ["C"]


def test_write_sdf_smiles_and_png(domain, moses, tmp_path):
    mols = domain.decode(moses.tensors.subset(slice(0, 3)))
    cands = [Candidate(id=f"m{i}", obj=m, scores={"realism": 0.5}) for i, m in enumerate(mols)]
    paths = domain.write(cands, tmp_path)
    assert [p.name for p in paths] == ["m0.sdf", "m1.sdf", "m2.sdf"]
    back = [next(iter(Chem.SDMolSupplier(str(p)))) for p in paths]
    assert [Chem.MolToSmiles(m) for m in back] == moses.ids[:3]
    assert back[0].GetProp("realism") == "0.5"
    smi = (tmp_path / "molecules.smi").read_text().split("\n")
    assert smi[:3] == [f"{s} m{i}" for i, s in enumerate(moses.ids[:3])]
    png = domain.picture(cands, tmp_path / "top.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unsanitisable_text_is_an_invalid_candidate_not_a_crash(domain):
    mol = domain.deserialize("C(C)(C)(C)(C)C")  # pentavalent carbon
    report = domain.check(mol)
    assert not report.structural and not report.valid and "does not sanitise" in report.reasons
    assert domain.describe(mol)["n_heavy_atoms"] == 6


def test_molecule_config_defaults_and_crystal_keys_unchanged():
    cfg = config_from_dict({"domain": "molecule", "data": {"train": "molecules/moses/train.csv.gz"}})
    assert cfg.molecule is not None and cfg.molecule.max_tokens == 72
    assert isinstance(build_domain(cfg), MoleculeDomain)
    crystal = config_from_dict({})
    assert crystal.molecule is None and "molecule" not in crystal.generator_part()
    # the generator key of a crystal config is what it was before the molecule domain existed
    assert generator_key(crystal) == "4692bc2bd828"
    with pytest.raises(ConfigError, match="molecule section applies to domain: molecule only"):
        config_from_dict({"molecule": {"max_tokens": 40}})


def test_decoding_rule_opens_macrocycles_and_leaves_the_rest():
    """design/domains/molecule/decoding.py: a sampled macrocycle loses the ring token that closed it;
    drug-like rings, fused systems and the size indices of branch tokens are left alone."""
    from design.domains.molecule.chemistry import MAX_RING_SIZE
    from design.domains.molecule.decoding import large_rings, open_large_rings, ring_tokens
    from design.domains.molecule.tokens import (
        MoleculeTensors,
        Vocabulary,
        indices_to_selfies,
        selfies_to_indices,
        selfies_to_smiles,
        smiles_to_selfies,
    )

    smiles = ["C1CCCCCCCCC1", "CC1CCCCCCCCCCC1O", "c1ccc2ccccc2c1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "C1CCCCC1"]
    selfies = [smiles_to_selfies(s) for s in smiles]
    vocab = Vocabulary.fit(selfies)
    t = MoleculeTensors(torch.tensor([selfies_to_indices(s, vocab.index, 40) for s in selfies]), vocab.tokens)
    out, edited = open_large_rings(t)
    assert edited == 2 and out.tokens.shape == t.tokens.shape
    after = [selfies_to_smiles(indices_to_selfies(r, vocab.tokens)) for r in out.tokens.tolist()]
    assert [large_rings(s) for s in after] == [0, 0, 0, 0, 0]
    assert Chem.CanonSmiles(after[0]) == "CCCCCCCCCC"  # cyclodecane opened to decane, atoms kept
    assert Chem.MolFromSmiles(after[1]).GetNumAtoms() == 14
    assert torch.equal(out.tokens[2:], t.tokens[2:])  # no large ring: untouched
    assert large_rings("C1CCCCCCC1") == 1 and MAX_RING_SIZE == 8 and large_rings("C1CC") is None
    # the unsanitised screen perceives the same rings (a pentavalent carbon parses but does not sanitise)
    for smi in ("C1CCCCCCC1", "C1CCCCCCC1C2CCCCCCCCC2", "c1ccc2ccccc2c1", "CC", "C(C)(C)(C)(C)C1CCCCCCC1"):
        assert large_rings(smi, sanitize=False) == sum(len(r) >= 8 for r in Chem.GetSymmSSSR(Chem.MolFromSmiles(smi, sanitize=False)))
    assert large_rings("C1CCCCCCC1C2CCCCCCCCC2", sanitize=False) == 2 and large_rings("C(C)(C)(C)(C)C1CCCCCCC1") is None
    # ibuprofen: its branch tokens' size indices may be ring symbols; only the one real ring token is found
    row = selfies_to_indices(selfies[3], vocab.index, 40)
    assert len(ring_tokens(row, vocab.tokens)) == 1


@pytest.mark.parametrize("layers", [1, 2])
def test_sampler_step_is_the_trained_gru(layers):
    """The sampler's hand-written GRU step (input gates precomputed per token and per molecule)
    gives the teacher-forced ``nn.GRU`` logits, so sampling draws from the distribution trained."""
    from design.config import ModelConfig
    from design.domains.molecule.nets import TokenDecoderHead

    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=8, hidden=32, site_dim=16, decoder_layers=layers)
    head = TokenDecoderHead(cfg, vocab_size=11, max_tokens=9)
    h = torch.randn(5, 32)
    tokens = torch.randint(1, 11, (5, 7))
    with torch.no_grad():
        expected = head.logits({"h": h}, tokens)
        gates = head._input_gates(h)
        hx = list(head._h0(h))
        gi = gates["start"] + gates["trunk"]
        steps = []
        for t in range(tokens.shape[1]):
            steps.append(head.out(head._cell(gi, hx)))
            gi = gates["token"][tokens[:, t]] + gates["trunk"]
    assert torch.allclose(torch.stack(steps, 1), expected, atol=1e-5)
