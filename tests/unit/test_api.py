import pytest
import torch

from design import load_generator
from design.api import CrystalCandidate
from design.domains.crystal.tensors import cell_volume
from design.training.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def gen(tiny_checkpoint):
    return load_generator(tiny_checkpoint)


def test_same_seed_same_structures(gen):
    a = gen.generate(12, seed=3)
    b = gen.generate(12, seed=3)
    c = gen.generate(12, seed=4)
    assert [x.structure.as_dict() for x in a] == [x.structure.as_dict() for x in b]
    assert [x.structure.as_dict() for x in a] != [x.structure.as_dict() for x in c]


def test_sample_workers_change_nothing(gen):
    """Crystal batches sampled in forked worker processes are the batches sampled here."""
    here = gen.sample(40, seed=2, batch_size=8, workers=1, decode=True)
    forked = gen.sample(40, seed=2, batch_size=8, workers=2, decode=True)
    for name, value in vars(here.tensors).items():
        if torch.is_tensor(value):
            assert torch.allclose(value.float(), getattr(forked.tensors, name).float(), atol=1e-5), name
    assert [s.composition for s in here.objects] == [s.composition for s in forked.objects]
    assert gen.sample_workers(40, None, 8) >= 1 and gen.sample_workers(40, 1, 8) == 1


def test_candidates_carry_structure_ase_and_scores(gen):
    cands = gen.generate(5, seed=0)
    assert len(cands) == 5
    for c in cands:
        assert isinstance(c, CrystalCandidate)
        atoms = c.to_ase()
        assert len(atoms) == len(c.structure) >= 1
        assert atoms.pbc.all()
        assert {"realism", "penalty", "pred_formation_energy_per_atom"} <= set(c.scores)
        assert 0.0 <= c.scores["realism"] <= 1.0
        assert c.check is not None and isinstance(c.valid, bool)
    assert len({c.id for c in cands}) == 5


def test_target_conditioning_changes_samples(gen):
    lo = gen.sample(32, seed=1, target={"formation_energy_per_atom": -3.0})
    hi = gen.sample(32, seed=1, target={"formation_energy_per_atom": 0.0})
    assert not torch.equal(lo.tensors.lattice, hi.tensors.lattice)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"n": 0}, ValueError, "positive"),
        ({"n": -3}, ValueError, "positive"),
        ({"n": 2.5}, TypeError, "int"),
        ({"n": 2, "target": {"band_gap": 1.0}}, ValueError, "unknown target property 'band_gap'"),
        ({"n": 2, "target": {"formation_energy_per_atom": float("nan")}}, ValueError, "finite"),
        ({"n": 2, "target": [1.0]}, TypeError, "dict"),
        ({"n": 2, "target": {"formation_energy_per_atom": -500.0}}, ValueError,
         r"-500.0 is far outside the training data .* Ask for a value between"),
        ({"n": 2, "temperature": 0.0}, ValueError, "temperature"),
    ],
)
def test_bad_arguments_rejected(gen, kwargs, err, match):
    with pytest.raises(err, match=match):
        gen.generate(**kwargs)


def test_valid_only_keeps_sampling_until_enough_pass(gen, monkeypatch):
    from design.domains.crystal.checks import CrystalCheck

    calls = {"n": 0}

    def every_fifth(obj):  # a stand-in judge: one candidate in five passes
        calls["n"] += 1
        ok = calls["n"] % 5 == 0
        return CrystalCheck(structural=ok, compositional=ok, reasons=() if ok else ("stand-in",))

    monkeypatch.setattr(gen.domain, "check_many", lambda objs: [every_fifth(o) for o in objs])
    cands = gen.generate(7, seed=0, valid_only=True)
    assert len(cands) == 7 and all(c.valid for c in cands)
    assert [c.id for c in cands] == [f"s0-{i:06d}" for i in range(7)]
    monkeypatch.setattr(gen.domain, "check_many", lambda objs: [CrystalCheck(False, False, ("never",))] * len(objs))
    with pytest.raises(RuntimeError, match="only 0 of 2 valid candidates"):
        gen.generate(2, seed=0, valid_only=True, max_tries=2)


def test_tampered_and_truncated_checkpoints(tiny_checkpoint, tmp_path):
    raw = tiny_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_generator(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_generator(garbage)
    # a pickle that would run code is refused by weights_only loading
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": 1}, evil)
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_generator(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "missing.pt")


def test_scores_do_not_change_samples_and_match_rescoring(gen):
    scored = gen.sample(24, seed=5)
    bare = gen.sample(24, seed=5, score=False)
    assert bare.scores == {}
    assert torch.equal(scored.tensors.z, bare.tensors.z) and torch.equal(scored.tensors.frac, bare.tensors.frac)
    again = gen.score(bare.tensors, batch_size=7)  # batching must not matter
    assert set(again) == set(scored.scores)
    for k, v in again.items():
        assert torch.allclose(v, scored.scores[k], atol=1e-5), k


def test_constrained_decoding_changes_elements_only_and_never_loses_validity(gen):
    assert gen.config.generate.constrained_decoding  # on by default
    raw = gen.sample(200, seed=9, score=False, constrained=False)
    con = gen.sample(200, seed=9, score=False)
    # same draws: fractional coordinates and cell shape identical; element choices (and merged
    # duplicates) differ, and each cell is scaled to its composition's fitted volume
    assert torch.equal(raw.tensors.frac, con.tensors.frac)
    ratio = con.tensors.lattice / raw.tensors.lattice
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, equal_nan=True)
    assert ((con.tensors.z > 0) <= (raw.tensors.z > 0)).all()  # the rules only empty slots
    n_el = lambda t: torch.tensor([len(set(r[r > 0].tolist())) for r in t.z])  # noqa: E731
    assert n_el(con.tensors).float().mean() >= n_el(raw.tensors).float().mean()
    # cells have their composition's fitted volume, but for the few crystals that lost a site in
    # the last overlap pass (after the cell was scaled)
    volumes = gen.model.generator.head.element_volume
    assert volumes is not None
    predicted = volumes[con.tensors.z].sum(1)
    assert torch.isclose(cell_volume(con.tensors.lattice), predicted, rtol=1e-4).float().mean() > 0.95
    raw_cands, con_cands = gen.candidates(raw), gen.candidates(con)
    assert all(c.check.structural for c in con_cands)  # no two atoms within 0.5 A after the rules
    assert sum(c.check.compositional for c in con_cands) >= sum(c.check.compositional for c in raw_cands)
    assert not torch.equal(raw.tensors.z, con.tensors.z)


def test_overlapping_atoms_of_different_elements_keep_the_more_confident_one(gen):
    head = gen.model.generator.head
    k, s = head.n_palette, head.max_sites
    big = 30.0
    pal = torch.full((1, k, head.palette_allowed.shape[1]), -big)
    pal[0, 0, 11] = pal[0, 1, 17] = big  # entry 0 Na, entry 1 Cl
    pal[0, 2:, 0] = big  # the other entries unused
    typ = torch.full((1, s, k + 1), -big)
    typ[0, :, 0] = big  # empty slots ...
    typ[0, 0, :] = torch.tensor([-big, big] + [-big] * (k - 1))  # ... but for Na at the origin,
    typ[0, 1, :] = torch.tensor([2.0, -big, 4.0] + [-big] * (k - 2))  # a less sure Cl 0.05 A away
    typ[0, 2, :] = torch.tensor([-big, -big, big] + [-big] * (k - 2))  # and a sure Cl in the middle
    frac = torch.zeros(1, s, 3)
    frac[0, 1, 0], frac[0, 2] = 0.01, 0.5
    ang = 2 * torch.pi * frac
    raw = {"palette_logits": pal, "type_logits": typ, "coord_vec": torch.stack([ang.cos(), ang.sin()], -1),
           "lattice_std": torch.zeros(1, 6)}
    g = torch.Generator().manual_seed(0)
    loose = head.sample(raw, generator=g)
    kept = head.sample(raw, generator=torch.Generator().manual_seed(0), constrained=True)
    species = lambda b: b.species.argmax(-1)[0, :3].tolist()  # noqa: E731
    assert species(loose) == [11, 17, 17]
    assert species(kept) == [11, 0, 17]  # the less confident Cl goes; NaCl is left


def test_checkpoint_without_element_volumes_loads_and_keeps_generated_cells(tiny_checkpoint, tmp_path, caplog):
    from design.training.checkpoint import load_checkpoint, save_checkpoint

    blob = load_checkpoint(tiny_checkpoint)
    del blob["state"]["element_volumes"]  # as written before the volume rule existed
    old = save_checkpoint(tmp_path / "generator.pt", blob)
    g = load_generator(old)
    assert g.model.generator.head.element_volume is None
    assert "predates fitted element volumes" in caplog.text
    raw = g.sample(20, seed=2, score=False, constrained=False)
    con = g.sample(20, seed=2, score=False)
    assert torch.equal(raw.tensors.lattice, con.tensors.lattice)


def test_focused_prior_centres_on_the_training_samples_nearest_the_target(gen):
    bank = gen.latent_bank
    assert bank is not None and bank["mu"].shape == (len(bank["y"]), gen.latent_dim)
    j = gen.property_names.index("formation_energy_per_atom")
    value = -3.0
    prior = gen.focused_prior({"formation_energy_per_atom": value}, 5)
    std_target = (value - gen.property_mean[j]) / gen.property_std[j]
    nearest = torch.argsort((bank["y"][:, j] - std_target).abs())[:5]
    assert torch.allclose(prior.mean, bank["mu"][nearest].mean(0), atol=1e-5)
    extra = torch.full((3, gen.latent_dim), 7.0)
    with_extra = gen.focused_prior({"formation_energy_per_atom": value}, 5, extra)
    assert torch.allclose(with_extra.mean, torch.cat([bank["mu"][nearest], extra]).mean(0), atol=1e-5)
    a = gen.sample(16, seed=2, target={"formation_energy_per_atom": value}, prior=prior)
    b = gen.sample(16, seed=2, target={"formation_energy_per_atom": value})
    assert not torch.equal(a.tensors.lattice, b.tensors.lattice)  # the prior was used
    with pytest.raises(ValueError, match="k=1"):
        gen.focused_prior({"formation_energy_per_atom": value}, 1)
    with pytest.raises(ValueError, match="unknown target property"):
        gen.focused_prior({"e_3d": 0.3}, 5)


def test_mixture_prior_samples_around_the_training_encodings(gen):
    from design.config import ConfigError
    from design.models.latent_prior import MixturePrior

    mix = gen.with_generate(latent_prior="mixture", prior_spread=0.05)
    assert gen.config.generate.latent_prior == "fitted" and mix.model is gen.model  # weights shared
    prior = mix.base_prior()
    assert isinstance(prior, MixturePrior) and torch.equal(prior.centres, gen.latent_bank["mu"])
    bank = gen.latent_bank["mu"]
    near = torch.cdist(prior.sample(64, torch.Generator().manual_seed(0)), bank).min(1).values
    wide = torch.cdist(gen.base_prior().sample(64, torch.Generator().manual_seed(0)), bank).min(1).values
    assert near.mean() < 0.5 * wide.mean()
    a, b = mix.sample(8, seed=3, score=False), gen.sample(8, seed=3, score=False)
    assert not torch.equal(a.tensors.lattice, b.tensors.lattice)  # sample() draws from it
    standard = gen.with_generate(latent_prior="standard").base_prior()
    assert torch.equal(standard.scale_tril, torch.eye(gen.latent_dim))
    with pytest.raises(ConfigError, match="prior_spread"):
        gen.with_generate(prior_spread=0)
    with pytest.raises(ConfigError, match="unknown key 'generate.spread'"):
        gen.with_generate(spread=0.5)
    no_bank = gen.with_generate(latent_prior="mixture")
    no_bank.latent_bank = None
    with pytest.raises(ValueError, match="no latent bank"):
        no_bank.base_prior()


def test_latent_means_of_generated_structures(gen):
    cands = gen.generate(4, seed=0)
    mu = gen.latent_means([c.structure for c in cands])
    assert mu.shape == (4, gen.latent_dim) and torch.isfinite(mu).all()
    assert gen.latent_means([]).shape == (0, gen.latent_dim)


def test_impossible_target_is_named_with_the_reachable_range():
    from design.api import TARGET_MARGIN_SIGMA, standardised_target

    names, mean, std, low, high = ["a", "b"], [1.0, 4.5], [0.5, 0.6], [0.0, 0.1], [2.0, 5.0]
    assert standardised_target({"a": 2.0}, names, mean, std, low, high) == [2.0, 0.0]
    # a skewed property (most training values at 5, a few near 0.1): a low target is far from the
    # mean in std units but inside the training range, so it is allowed
    assert standardised_target({"b": 0.3}, names, mean, std, low, high)[1] == pytest.approx(-7.0)
    edge = high[0] + TARGET_MARGIN_SIGMA * std[0]
    assert standardised_target({"a": edge}, names, mean, std, low, high)[0] == pytest.approx(5.0)
    with pytest.raises(ValueError, match=r"target a=3.6 is far outside the training data \(0 to 2, std 0.5\).*"
                                         r"between -1.5 and 3.5"):
        standardised_target({"a": 3.6}, names, mean, std, low, high)


def test_prior_scale_widens_the_fitted_and_standard_gaussians(gen):
    from design.config import ConfigError

    wide = gen.with_generate(prior_scale=1.5)
    base, prior = gen.base_prior(), wide.base_prior()
    assert torch.equal(prior.mean, base.mean) and torch.allclose(prior.scale_tril, 1.5 * base.scale_tril)
    z0, z1 = (p.sample(4096, torch.Generator().manual_seed(0)) for p in (base, prior))
    ratio = (z1 - base.mean).norm(dim=1).mean() / (z0 - base.mean).norm(dim=1).mean()
    assert abs(ratio.item() - 1.5) < 0.01  # same noise, 1.5 x the distance from the centre
    assert gen.base_prior() is gen.latent_prior  # scale 1 leaves the fitted prior as it is
    standard = gen.with_generate(latent_prior="standard", prior_scale=2.0).base_prior()
    assert torch.equal(standard.scale_tril, 2.0 * torch.eye(gen.latent_dim))
    a, b = wide.sample(8, seed=3, score=False), gen.sample(8, seed=3, score=False)
    assert not torch.equal(a.tensors.lattice, b.tensors.lattice)  # sample() draws from it
    with pytest.raises(ConfigError, match="prior_scale"):
        gen.with_generate(prior_scale=0)
    with pytest.raises(ConfigError, match="prior_scale=1.2 widens the fitted or standard Gaussian"):
        gen.with_generate(latent_prior="mixture", prior_scale=1.2)


def test_relaxation_moves_sites_and_cell_shape_only_and_is_deterministic(gen):
    assert gen.config.generate.relax_steps == 0  # the tiny config keeps the decoder's geometry
    plain = gen.sample(100, seed=3, score=False)
    relaxing = gen.with_generate(relax_steps=20, relax_scale=1.2)
    relaxed = relaxing.sample(100, seed=3, score=False)
    assert torch.equal(relaxed.tensors.frac, relaxing.sample(100, seed=3, score=False).tensors.frac)
    assert torch.equal(plain.tensors.z, relaxed.tensors.z)
    assert torch.allclose(cell_volume(plain.tensors.lattice), cell_volume(relaxed.tensors.lattice), rtol=1e-4)
    assert not torch.allclose(plain.tensors.frac, relaxed.tensors.frac)
    valid = lambda b: sum(c.valid for c in gen.domain.check_many(gen.domain.decode(b.tensors)))  # noqa: E731
    assert valid(relaxed) >= valid(plain)
