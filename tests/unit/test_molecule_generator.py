"""A tiny trained molecule generator: seeded determinism, the generator API, MOSES metrics, the benchmark."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from design import load_generator
from design.api import MoleculeCandidate
from design.domains import build_domain
from design.metrics import molecule as mm
from design.models import build_model
from design.training.trainer import Trainer

from testkit import MOLECULES_TEST, tiny_molecule_config


def _train(tmp_path_factory, name):
    cfg = tiny_molecule_config()
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    return Trainer(cfg, domain, ds, tmp_path_factory.mktemp(name)).run()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _train(tmp_path_factory, "tiny-molecule")


@pytest.fixture(scope="module")
def gen(trained):
    return load_generator(trained.checkpoint)


def test_training_is_seeded(trained, tmp_path_factory):
    again = _train(tmp_path_factory, "tiny-molecule-again")
    a = torch.load(trained.checkpoint, weights_only=True)["model"]
    b = torch.load(again.checkpoint, weights_only=True)["model"]
    # equal up to float round-off: multithreaded CPU reductions (embedding gradients) may add in another order
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)
    assert [r["rec_tokens"] for r in trained.history] == pytest.approx([r["rec_tokens"] for r in again.history],
                                                                      rel=1e-6)
    assert trained.history[-1]["rec_tokens"] < trained.history[0]["rec_tokens"]  # it learns


def test_same_seed_same_molecules(gen):
    a = [c.smiles for c in gen.generate(24, seed=3)]
    b = [c.smiles for c in gen.generate(24, seed=3)]
    c = [c.smiles for c in gen.generate(24, seed=4)]
    assert a == b and a != c


def test_candidates_are_rdkit_molecules_with_scores(gen):
    cands = gen.generate(16, seed=0)
    assert all(isinstance(c, MoleculeCandidate) for c in cands)
    for c in cands:
        assert isinstance(c.mol, Chem.Mol) and c.mol.GetNumAtoms() > 0
        assert {"realism", "penalty", "pred_logp"} <= set(c.scores)
        assert c.check.structural  # SELFIES: every sample is a sanitisable molecule
    assert len(gen.sample(2500, seed=0, batch_size=1024).tensors) == 2500  # several batches joined


def test_sample_workers_change_nothing(gen, monkeypatch):
    """Batches sampled in forked worker processes (which hand their graphs on, so this process
    decodes without deriving the rows again) are the batches sampled here: same tokens, scores and
    molecules; each batch has its own seeded stream, so a call's first batch does not depend on how
    many follow."""
    from design.domains.molecule.assemble import MolAssembler

    here = gen.sample(700, seed=6, batch_size=128, workers=1, decode=True)
    taken, derived = [], []
    keep, derive = type(gen.domain).keep_decode_state, MolAssembler._derive
    monkeypatch.setattr(type(gen.domain), "keep_decode_state", lambda self, t, s: taken.append(s) or keep(self, t, s))
    monkeypatch.setattr(MolAssembler, "_derive", lambda self, t: derived.append(len(t)) or derive(self, t))
    gen.domain._assembled = None  # nothing kept from the first call
    forked = gen.sample(700, seed=6, batch_size=128, workers=3, decode=True)
    assert len(taken) == 6 and sum(len(s) for s in taken) == 700  # six batches came from the workers
    assert derived == []  # in this process
    assert torch.equal(here.tensors.tokens, forked.tensors.tokens)
    assert here.scores.keys() == forked.scores.keys()
    for k in here.scores:  # the workers' products run on fewer threads: equal up to round-off
        assert torch.allclose(here.scores[k], forked.scores[k], rtol=1e-5, atol=1e-5), k
    assert [Chem.MolToSmiles(m) for m in here.objects] == [Chem.MolToSmiles(m) for m in forked.objects]
    assert [m.GetIntProp("invdes_sanitized") for m in forked.objects] == [1] * 700
    first = gen.sample(128, seed=6, batch_size=128, score=False, workers=1)
    assert torch.equal(first.tensors.tokens, here.tensors.tokens[:128])
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="sample workers must be an int"):
            gen.sample(300, seed=6, batch_size=128, workers=bad)


def test_decoding_rules_beside_sampling_or_in_turn_change_nothing(gen, monkeypatch):
    """The rules run on each batch either in a worker thread while the next batch is sampled or in
    turn (the molecule domain's choice): the same molecules, constrained unlike the raw ones, with
    nothing left for the rules to change."""
    assert not gen.domain.rules_beside_sampling
    in_turn = gen.sample(600, seed=5, batch_size=128, score=False, constrained=True).tensors
    monkeypatch.setattr(type(gen.domain), "rules_beside_sampling", True)
    beside = gen.sample(600, seed=5, batch_size=128, score=False, constrained=True).tensors
    assert torch.equal(in_turn.tokens, beside.tokens)
    raw = gen.sample(600, seed=5, batch_size=128, score=False, constrained=False).tensors
    assert not torch.equal(in_turn.tokens, raw.tokens)  # the tiny generator writes macrocycles
    assert torch.equal(gen.domain.decoding_rules(in_turn).tokens, in_turn.tokens)


def test_valid_only_and_target(gen):
    cands = gen.generate(5, seed=1, valid_only=True, target={"logp": 1.0})
    assert len(cands) == 5 and all(c.valid for c in cands)
    with pytest.raises(ValueError, match="unknown target property 'qed'"):
        gen.generate(2, target={"qed": 0.5})


def test_tanimoto_metrics_match_rdkit():
    smiles = ["CCO", "CCN", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCCCCC"]
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    bits = mm.morgan_bits(mols)
    fpgen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fps = [fpgen.GetFingerprint(m) for m in mols]
    sims = np.array([DataStructs.BulkTanimotoSimilarity(f, fps) for f in fps])
    assert mm.internal_diversity(bits) == pytest.approx(1 - sims.mean(), abs=1e-6)
    assert mm.snn(bits[:2], bits[2:]) == pytest.approx(sims[:2, 2:].max(1).mean(), abs=1e-6)
    assert mm.snn(bits, bits) == pytest.approx(1.0)


def test_count_metrics_hand_values():
    assert mm.unique_at(["a", "a", "b", "c"], 2) == 0.5
    assert mm.unique_at(["a", "a", "b", "c"], 10) == 0.75
    assert mm.novelty(["a", "b", "b", "c"], {"a"}) == pytest.approx(2 / 3)
    assert mm.cosine(mm.Counter({"x": 1, "y": 1}), mm.Counter({"x": 2})) == pytest.approx(2 / (2**0.5 * 2))
    assert mm.cosine(mm.Counter({"": 5, "x": 1}), mm.Counter({"x": 3}), drop_empty=True) == pytest.approx(1.0)
    benzene = Chem.MolFromSmiles("c1ccccc1CCNC(=O)C")
    assert mm.scaffold(benzene) == "c1ccccc1"
    assert sorted(mm.fragments(Chem.MolFromSmiles("CCOC(=O)c1ccccc1")))  # BRICS splits the ester


def test_fcd_of_a_set_with_itself_is_zero_and_differs_from_another():
    from design.data.sources import resolve

    smiles = pd.read_csv(resolve(MOLECULES_TEST), nrows=300)["SMILES"].tolist()
    mu1, s1 = mm.chemnet_stats(smiles[:150])
    mu2, s2 = mm.chemnet_stats(smiles[150:])
    assert mm.frechet(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-3)
    alkanes = ["C" * k for k in range(2, 40)] + ["C" * k + "O" for k in range(2, 40)]
    mu3, s3 = mm.chemnet_stats(alkanes)
    assert mm.frechet(mu1, s1, mu2, s2) < mm.frechet(mu1, s1, mu3, s3)


def test_benchmark_runs_on_small_sets(gen, tmp_path):
    from design.benchmark_molecule import format_table, run_molecule_benchmark, write_json
    from design.data.sources import resolve

    ref = tmp_path / "ref.csv"
    pd.read_csv(resolve(MOLECULES_TEST), nrows=120).to_csv(ref, index=False)
    out = run_molecule_benchmark(gen, n=60, seed=0, reference=str(ref), train=str(ref), fcd_samples=40,
                                 fcd_reference=60, snn_samples=30, intdiv_samples=30)
    assert out["valid"] == pytest.approx(out["n_valid"] / 60)
    for key in ("valid", "unique@1k", "unique@10k", "novelty", "Filters", "SNN/Test", "Frag/Test", "Scaf/Test",
                "IntDiv"):
        assert 0.0 <= out[key] <= 1.0, key
    assert out["unique@1k"] == out["unique@10k"]  # fewer than 1,000 valid samples: the same set
    assert np.isfinite(out["FCD/Test"]) and out["FCD/Test"] > 0
    assert out["sample_decode_valid_per_s"] > out["generate_filter_rank_valid_per_s"] > 0
    assert out["info"]["fcd_samples"] == 40 and out["info"]["reference_size"] == 120
    rejections = out["info"]["filter_rejections"]
    assert all(0 < v <= 1 for v in rejections.values()) and max(rejections.values(), default=0) <= 1 - out["Filters"]
    fit = out["info"]["heldout_fit"]
    assert fit["n"] + sum(fit["skipped"].values()) == 120  # elbo_samples (5,000) capped by the reference
    assert out["NLL_bound/Test"] == pytest.approx(fit["reconstruction"] + fit["kl"]) and fit["kl"] > 0
    table = format_table(out)
    assert "FCD/Test" in table and "CharRNN" in table
    write_json(out, tmp_path / "b.json")
    crystal_generator = SimpleNamespace(domain=SimpleNamespace(name="crystal"))
    with pytest.raises(ValueError, match="needs a molecule generator"):
        run_molecule_benchmark(crystal_generator, n=10)


def test_heldout_likelihood_bound(gen):
    """``Generator.negative_elbo``: reconstruction + KL in nats per molecule; real molecules are explained
    better than the same tokens shuffled; seeded; molecules it cannot encode are skipped and counted."""
    from design.benchmark_molecule import heldout_fit
    from design.data.sources import resolve
    from design.domains.molecule import chemistry
    from design.domains.molecule.tokens import MoleculeTensors

    smiles = pd.read_csv(resolve(MOLECULES_TEST), nrows=64)["SMILES"].tolist()
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    tensors = gen.domain.encode(mols)
    props = torch.tensor([[chemistry.descriptor(p, m) for p in gen.property_names] for m in mols])
    fit = gen.negative_elbo(tensors, props, seed=1, batch_size=24)
    assert fit["negative_elbo"] == pytest.approx(fit["reconstruction"] + fit["kl"])
    assert fit["reconstruction"] > 0 and fit["kl"] > 0
    assert gen.negative_elbo(tensors, props, seed=1, batch_size=24) == fit
    assert gen.negative_elbo(tensors, props, seed=2, batch_size=24) != fit  # one posterior sample per molecule
    g = torch.Generator().manual_seed(0)
    shuffled = tensors.tokens.clone()
    for row, n in zip(shuffled, tensors.lengths().tolist(), strict=True):
        row[:n] = row[:n][torch.randperm(n, generator=g)]
    worse = gen.negative_elbo(MoleculeTensors(shuffled, tensors.vocab), props, seed=1)
    assert worse["reconstruction"] > fit["reconstruction"] + 1  # the tiny model knows a little chemistry
    with pytest.raises(ValueError, match="properties"):
        gen.negative_elbo(tensors, props[:10])
    out = heldout_fit(gen, smiles[:10] + ["not_a_smiles", "C" * 200, "[Na+].[Cl-]"])
    assert out["n"] == 10 and sum(out["skipped"].values()) == 3
    assert out["skipped"]["SMILES does not parse"] == 1


def test_fewer_adversarial_samples_than_the_batch(tmp_path, monkeypatch):
    """``train.adv_samples`` sets how many prior samples each step decodes (with the conditions drawn
    from the batch's); the property-only discriminator steps before the game starts decode none."""
    cfg = tiny_molecule_config(train={"epochs": 2, "adv_start_epoch": 1, "adv_samples": 16, "monitor_samples": 8})
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    sizes = []
    original = Trainer._sample

    def sample(self, raw):
        sizes.append((len(raw["h"]), torch.is_grad_enabled()))
        return original(self, raw)

    monkeypatch.setattr(Trainer, "_sample", sample)
    result = Trainer(cfg, domain, ds, tmp_path).run()
    assert np.isfinite(result.history[1]["g_adv"]) and np.isfinite(result.history[0]["penalty"])
    steps = len(ds) // cfg.train.batch_size
    with_grad = [n for n, grad in sizes if grad]
    without = [n for n, grad in sizes if not grad and n == 16]
    assert with_grad == [16] * (2 * steps)  # the generator's prior samples, every step
    assert len(without) == steps  # the discriminator's, in the adversarial epoch only
    # an option at its default stays out of the generator key: older generators keep their keys
    assert "adv_samples" not in tiny_molecule_config().generator_part()["train"]
    assert cfg.generator_part()["train"]["adv_samples"] == 16


def test_training_reads_teacher_features_worked_out_once(tmp_path):
    """The trainer's tensors carry the decoder's teacher-forced derivation features (uint8 indices,
    through subsets), and the likelihood read from them is the one derived batch by batch."""
    cfg = tiny_molecule_config()
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    trainer = Trainer(cfg, domain, ds, tmp_path)
    trainer._setup()
    cached = trainer.tensors_all
    assert cached.features is not None and cached.features.dtype == torch.uint8
    assert cached.features.shape[:2] == cached.tokens.shape
    idx = torch.arange(5, 45)
    part, plain = cached.subset(idx), ds.tensors.subset(idx)
    assert plain.features is None and torch.equal(part.tokens, plain.tokens)
    head = trainer.model.generator.head
    raw = {"h": torch.randn(len(idx), cfg.model.hidden)}
    with torch.no_grad():
        assert torch.equal(head.logits(raw, plain.tokens, part.features), head.logits(raw, plain.tokens))
        a, b = head.reconstruction_loss(raw, part)["tokens"], head.reconstruction_loss(raw, plain)["tokens"]
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    # a decoder that reads no features gets the tensors unchanged
    bare = tiny_molecule_config(model={"grammar_features": False, "grammar_valence": False})
    model = build_model(bare, domain, domain.fit_state(ds))
    assert domain.training_tensors(ds.tensors, model) is ds.tensors


def test_realism_critic_learns_without_steering_the_generator(tmp_path):
    """``train.realism_critic`` with ``adv_weight`` 0: D's realism head trains (d_adv, from
    adv_start_epoch) and, after two critic epochs, tells real from generated, while the generator's loss has no
    adversarial term."""
    cfg = tiny_molecule_config(train={"epochs": 3, "adv_start_epoch": 1, "adv_weight": 0.0, "realism_critic": True,
                                      "fm_weight": 0.0, "cond_weight": 0.0})
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    hist = Trainer(cfg, domain, ds, tmp_path).run().history
    assert "d_adv" not in hist[0] and "d_adv" in hist[1]
    assert all("g_adv" not in row for row in hist)
    assert hist[2]["mon_realism_gap"] > 0  # the critic rates real molecules above generated ones
    assert cfg.generator_part()["train"]["realism_critic"] is True
    assert "realism_critic" not in tiny_molecule_config().generator_part()["train"]


def test_critic_after_the_generator_and_a_reconstruction_only_penalty(tmp_path, monkeypatch):
    """``train.critic_epochs``: the critic learns in its own epochs after the generator's, the
    generator frozen, its learning rate on a cosine of its own; ``train.penalty_prior`` false: the
    penalty scores the soft reconstruction only, so a VAE step decodes no prior samples."""
    cfg = tiny_molecule_config(train={"epochs": 2, "adv_start_epoch": 0, "adv_weight": 0.0, "realism_critic": True,
                                      "critic_epochs": 1, "penalty_prior": False, "adv_samples": 16,
                                      "monitor_samples": 8, "fm_weight": 0.0, "cond_weight": 0.0,
                                      "lr_schedule": "cosine"})
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    sizes = []
    original = Trainer._sample

    def sample(self, raw):
        sizes.append((len(raw["h"]), torch.is_grad_enabled(), self.opt_d.param_groups[0]["lr"]))
        return original(self, raw)

    monkeypatch.setattr(Trainer, "_sample", sample)
    result = Trainer(cfg, domain, ds, tmp_path).run()
    hist = result.history
    assert [row["epoch"] for row in hist] == [1, 2, 3]
    assert [("d_adv" in row) for row in hist] == [False, False, True]
    assert [("rec_tokens" in row) for row in hist] == [True, True, False]  # G frozen in the critic's epoch
    assert all(np.isfinite(row["penalty"]) and row["penalty"] >= 0 for row in hist[:2])
    steps = len(ds) // cfg.train.batch_size
    assert not [n for n, grad, _ in sizes if grad]  # no autograd sampling at all
    critic = [lr for n, grad, lr in sizes if not grad and n == 16]
    assert len(critic) == steps  # the critic's samples, in its epoch only
    # the critic's rate starts again from the base and ends, as G's did, at the cosine's end
    assert critic[0] == pytest.approx(cfg.train.lr_d) and critic[-1] < critic[0]
    assert hist[2]["lr_d"] == pytest.approx(hist[1]["lr_d"]) == pytest.approx(cfg.train.lr_d * cfg.train.lr_final)
    blob = torch.load(result.checkpoint, weights_only=True)
    assert blob["epoch"] == 3 and blob["complete"]
    part = cfg.generator_part()["train"]
    assert part["critic_epochs"] == 1 and part["penalty_prior"] is False
    assert not {"critic_epochs", "penalty_prior"} & set(tiny_molecule_config().generator_part()["train"])
    with pytest.raises(ValueError, match="critic_epochs"):
        tiny_molecule_config(train={"critic_epochs": 1, "realism_critic": False})


def test_discriminator_only_after_the_generator(tmp_path):
    """``train.d_after_generator``: no discriminator step in the generator's epochs (its property heads
    included), all of them in the critic's; refused without critic_epochs; part of the generator key."""
    train = {"epochs": 2, "adv_start_epoch": 0, "adv_weight": 0.0, "realism_critic": True, "critic_epochs": 1,
             "penalty_prior": False, "adv_samples": 16, "monitor_samples": 8, "fm_weight": 0.0, "cond_weight": 0.0}
    cfg = tiny_molecule_config(train={**train, "d_after_generator": True})
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    trainer = Trainer(cfg, domain, ds, tmp_path)
    calls = []
    original = trainer._d_step
    trainer._d_step = lambda real, y, realism: calls.append(realism) or original(real, y, realism)
    hist = trainer.run().history
    assert [("d_prop" in row) for row in hist] == [False, False, True]
    assert [("rec_tokens" in row) for row in hist] == [True, True, False]
    assert calls == [True] * (len(ds) // cfg.train.batch_size)  # the critic's epoch only
    assert cfg.generator_part()["train"]["d_after_generator"] is True
    assert "d_after_generator" not in tiny_molecule_config(train=train).generator_part()["train"]
    with pytest.raises(ValueError, match="d_after_generator"):
        tiny_molecule_config(train={**train, "critic_epochs": None, "d_after_generator": True})


def test_bf16_training_steps(tmp_path, monkeypatch):
    """``train.precision``: bf16 runs a step's forward passes under autocast (a step's loss within 1% of
    float32's from the same weights on the same batch); weights stay float32, the critic's prior samples
    are drawn in float32, the run records what it computed in, ``auto`` follows the device's bf16 units,
    and the option joins the generator key only away from its default."""
    from design import utils

    train = {"epochs": 1, "adv_start_epoch": 0, "adv_weight": 0.0, "realism_critic": True, "critic_epochs": 1,
             "penalty_prior": False, "adv_samples": 16, "monitor_samples": 8, "fm_weight": 0.0, "cond_weight": 0.0}
    cfg = tiny_molecule_config(train={**train, "precision": "bf16"})
    domain = build_domain(cfg)
    ds = domain.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    trainer = Trainer(cfg, domain, ds, tmp_path)
    assert trainer.autocast is torch.bfloat16 and trainer.precision == "bf16"
    trainer._setup()
    idx = torch.arange(64)
    t = trainer.tensors_all.subset(idx)
    real, y = domain.real_batch(t), trainer.ystd_all[idx]
    losses = {}
    for dtype in (None, torch.bfloat16):
        trainer.autocast = dtype
        torch.manual_seed(3)
        with trainer._forward():
            loss, _ = trainer._g_loss(t, real, y, 0, False)
        assert loss.dtype == torch.float32
        losses[dtype] = float(loss.detach())
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=0.01)
    assert losses[torch.bfloat16] != losses[None]  # autocast did change the arithmetic

    dtypes = []
    original = Trainer._sample

    def sample(self, raw):
        out = original(self, raw)
        dtypes.append((torch.is_grad_enabled(), raw["h"].dtype, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(Trainer, "_sample", sample)
    result = Trainer(cfg, domain, ds, tmp_path / "run").run()
    assert all(np.isfinite(v) for row in result.history for v in row.values())
    assert dtypes and all(d == (False, torch.float32, False) for d in dtypes)  # the critic's samples
    blob = torch.load(result.checkpoint, weights_only=True)
    assert blob["train_info"]["precision"] == "bf16"
    assert all(v.dtype in (torch.float32, torch.long, torch.bool) for v in blob["model"].values())
    g = load_generator(result.checkpoint)
    assert len(g.generate(8, seed=0)) == 8

    for native, want in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(utils, "native_bf16", lambda device, native=native: native)
        assert Trainer(tiny_molecule_config(train={"precision": "auto"}), domain, ds, tmp_path).autocast is want
        assert Trainer(tiny_molecule_config(train={"precision": "fp32"}), domain, ds, tmp_path).autocast is None
    assert cfg.generator_part()["train"]["precision"] == "bf16"
    assert "precision" not in tiny_molecule_config().generator_part()["train"]
    from testkit import tiny_config  # crystals keep float32: auto stays there, bf16 is refused by name

    crystal = tiny_config(train={"precision": "auto"})
    cdomain = build_domain(crystal)
    assert not cdomain.trains_in_bf16 and Trainer(crystal, cdomain, ds, tmp_path).autocast is None
    with pytest.raises(ValueError, match="not supported by the crystal domain"):
        Trainer(tiny_config(train={"precision": "bf16"}), cdomain, ds, tmp_path)


def test_finetuning_moves_the_generator_toward_its_objects(trained, tmp_path):
    """Fine-tuning on a few molecules (design/training/finetune.py) lowers their likelihood loss, keeps
    the checkpoint loadable with its history, records the step, and makes the molecules likelier."""
    from design.training.finetune import finetune_checkpoint

    target = ["CCOC(=O)c1ccccc1", "CC(=O)Nc1ccc(O)cc1"]
    path = finetune_checkpoint(trained.checkpoint, target, tmp_path / "tuned.pt", epochs=100, lr=5e-3, seed=0)
    blob = torch.load(path, weights_only=True)
    step = blob["finetune"][-1]
    assert step["objects"] == 2 and step["steps"] == 100 and step["loss_last"] < 0.5 * step["loss_first"]
    assert blob["history"] == torch.load(trained.checkpoint, weights_only=True)["history"]
    again = finetune_checkpoint(path, target, tmp_path / "tuned2.pt", epochs=1, lr=1e-4)
    assert len(torch.load(again, weights_only=True)["finetune"]) == 2  # a chain of steps is recorded

    @torch.no_grad()
    def nll(g):  # teacher-forced negative log-likelihood of the targets at their posterior means
        t = g.domain.encode(target)
        c = g.model.discriminator(g.domain.real_batch(t)).properties
        return float(sum(g.model.generator.head.reconstruction_loss(g.model.generator(g.model.encoder(t)[0], c), t).values()))

    assert nll(load_generator(path)) < 0.5 * nll(load_generator(trained.checkpoint))
    with pytest.raises(ValueError, match="at least one object"):
        finetune_checkpoint(trained.checkpoint, [], tmp_path / "none.pt")
