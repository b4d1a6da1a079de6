import math

import pytest
import torch

from design.data import training_set
from design.domains import build_domain
from design.domains.crystal.tensors import CrystalBatch
from design.models import build_model
from design.training.losses import LOSSES, get_loss

from testkit import tiny_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    dom = build_domain(cfg)
    ds = training_set(dom, cfg)
    torch.manual_seed(0)
    model = build_model(cfg, dom, dom.fit_state(ds)).eval()
    return cfg, dom, ds, model


def test_shapes(setup):
    cfg, dom, ds, model = setup
    t = ds.tensors.subset(torch.arange(8))
    mu, logvar = model.encoder(t)
    assert mu.shape == logvar.shape == (8, cfg.model.latent_dim)
    raw = model.generator(mu, torch.zeros(8, 1))
    k = cfg.model.max_elements
    assert raw["palette_logits"].shape == (8, k, 104)
    assert raw["type_logits"].shape == (8, 20, k + 1)
    batch = model.generator.head.sample(raw)
    assert batch.species.shape == (8, 20, 104) and batch.frac.shape == (8, 20, 3) and batch.lattice.shape == (8, 6)
    assert ((batch.frac >= 0) & (batch.frac < 1)).all()
    assert (batch.mask.sum(1) >= 1).all()  # at least one occupied site
    assert torch.allclose(batch.species.sum(-1), torch.ones(8, 20))  # one-hot per slot
    distinct = [len(set(row) - {0}) for row in batch.species.argmax(-1).tolist()]
    assert max(distinct) <= k  # never more elements than the palette holds
    out = model.discriminator(batch)
    assert out.realism.shape == (8,) and out.properties.shape == (8, 1)


def test_species_outside_training_vocabulary_never_sampled(setup):
    cfg, dom, ds, model = setup
    raw = model.generator(torch.randn(64, cfg.model.latent_dim), torch.zeros(64, 1))
    z = model.generator.head.sample(raw).species.argmax(-1)
    allowed = set(torch.unique(ds.tensors.z).tolist())
    assert set(torch.unique(z).tolist()) <= allowed


def test_discriminator_invariances(setup):
    cfg, dom, ds, model = setup
    batch = dom.real_batch(ds.tensors.subset(torch.arange(6)))
    ref = model.discriminator(batch).realism
    perm = torch.randperm(20)
    permuted = CrystalBatch(batch.species[:, perm], batch.frac[:, perm], batch.lattice)
    shifted = CrystalBatch(batch.species, torch.remainder(batch.frac + torch.tensor([0.13, 0.71, 0.4]), 1.0), batch.lattice)
    assert torch.allclose(model.discriminator(permuted).realism, ref, atol=1e-4)
    assert torch.allclose(model.discriminator(shifted).realism, ref, atol=1e-4)


def test_gradients_reach_generator_through_discrete_species(setup):
    cfg, dom, ds, model = setup
    model.zero_grad()
    raw = model.generator(torch.randn(4, cfg.model.latent_dim), torch.zeros(4, 1))
    model.discriminator(model.generator.head.sample(raw)).realism.sum().backward()
    for layer in (model.generator.head.types, model.generator.head.palette[-1]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_prefer_realistic_scores(name):
    loss = get_loss(name)
    real_hi, fake_lo = torch.full((16,), 3.0), torch.full((16,), -3.0)
    good_d = loss.d_loss(real_hi, fake_lo, 0.0)
    bad_d = loss.d_loss(fake_lo, real_hi, 0.0)
    assert good_d < bad_d
    # the generator's loss falls when its samples score higher
    assert loss.g_loss(real_hi, real_hi) < loss.g_loss(fake_lo, real_hi)


def test_hinge_hand_values():
    hinge = get_loss("hinge")
    assert hinge.d_loss(torch.tensor([0.5]), torch.tensor([-0.25]), 0.0).item() == pytest.approx(0.5 + 0.75)
    assert hinge.g_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(-2.0)


def test_label_smoothing_changes_bce_target():
    ns = get_loss("non_saturating")
    x = torch.tensor([10.0])
    assert ns.d_loss(x, -x, 0.1).item() == pytest.approx(0.1 * 10 + math.log1p(math.exp(-10)) + math.log1p(math.exp(-10)), rel=1e-3)


def test_unknown_loss_named():
    with pytest.raises(ValueError, match="unknown gan_loss 'lsgan'"):
        get_loss("lsgan")


def test_palette_targets_hand_example():
    from design.domains.crystal.nets import palette_targets

    z = torch.tensor([[12, 12, 8, 8, 0], [3, 26, 8, 8, 8]])
    palette, types = palette_targets(z, 3)
    assert palette.tolist() == [[12, 8, 0], [3, 26, 8]]
    assert types.tolist() == [[1, 1, 2, 2, 0], [1, 2, 3, 3, 3]]
    with pytest.raises(ValueError, match="3 distinct elements, more than the palette size 2"):
        palette_targets(z, 2)


def test_slots_pointing_at_unused_palette_entries_are_empty(setup):
    """A slot that picks an unused palette entry decodes as empty; a crystal whose every occupied
    slot did so still gets one real atom (this once gave structures with no sites)."""
    cfg, dom, _, model = setup
    head = model.generator.head
    k, s = cfg.model.max_elements, 20
    big = 1e4
    palette = torch.full((2, k, 104), -big)
    palette[:, 0, 11] = big  # entry 0: Na
    palette[:, 1:, 0] = big  # entries 1..: unused
    types = torch.full((2, s, k + 1), -big)
    types[0, :, 2] = big  # every slot of crystal 0 points at (unused) entry 1
    types[1, :3, 1] = big  # crystal 1: three Na sites, the rest point at entry 1
    types[1, 3:, 2] = big
    raw = {"palette_logits": palette, "type_logits": types, "coord_vec": torch.randn(2, s, 3, 2),
           "lattice_std": torch.zeros(2, 6)}
    batch = head.sample(raw, generator=torch.Generator().manual_seed(0))
    z = batch.species.argmax(-1)
    assert (z[0] > 0).sum() == 1 and set(z[0].tolist()) == {0, 11}
    assert (z[1] > 0).sum() == 3 and set(z[1].tolist()) == {0, 11}
    structures = dom.decode(dom.batch_to_tensors(batch))
    assert [len(x) for x in structures] == [1, 3]


def test_discriminator_augmentation(setup):
    cfg, dom, ds, model = setup
    batch = dom.real_batch(ds.tensors.subset(torch.arange(8)))
    gen = torch.Generator().manual_seed(0)
    # a random site order is an identity for the order-invariant discriminator
    permuted = dom.augment(batch, 0.0, True, gen)
    assert not torch.equal(permuted.frac, batch.frac)
    assert torch.allclose(model.discriminator(permuted).realism, model.discriminator(batch).realism, atol=1e-4)
    # jitter: Cartesian displacements with the asked standard deviation, lattice and species kept
    frac = batch.frac.clone().requires_grad_(True)
    moved = dom.augment(CrystalBatch(batch.species, frac, batch.lattice), 0.1, False, gen)
    assert torch.equal(moved.lattice, batch.lattice) and torch.equal(moved.species, batch.species)
    from design.domains.crystal.tensors import lattice_matrix

    delta = moved.frac.detach() - batch.frac
    delta = delta - torch.round(delta)  # undo the wrap into [0, 1)
    cart = torch.einsum("bsx,bxy->bsy", delta, lattice_matrix(batch.lattice))
    assert cart.std().item() == pytest.approx(0.1, rel=0.15)
    moved.frac.sum().backward()
    assert frac.grad is not None  # differentiable: D's gradient reaches the generator's coordinates


def test_domain_without_augmentation_refuses_it():
    from types import SimpleNamespace

    from design.domains.base import Domain

    bare = SimpleNamespace(name="bare")  # the base method only needs the domain's name
    with pytest.raises(ValueError, match="train.d_augment_jitter"):
        Domain.augment(bare, object(), 0.1, False)
    marker = object()
    assert Domain.augment(bare, marker, 0.0, False) is marker


@pytest.fixture(scope="module")
def counted():
    cfg = tiny_config(model={"site_count": True})
    dom = build_domain(cfg)
    ds = training_set(dom, cfg)
    torch.manual_seed(0)
    return cfg, dom, ds, build_model(cfg, dom, dom.fit_state(ds)).eval()


def test_count_head_draws_n_then_fills_the_first_n_slots_with_used_entries(counted):
    cfg, _, _, model = counted
    head = model.generator.head
    k, s = cfg.model.max_elements, 20
    big = 1e4
    palette = torch.full((3, k, 104), -big)
    palette[:, 0, 11] = big  # entry 0: Na, entry 1: Cl, the rest unused
    palette[:, 1, 17] = big
    palette[:, 2:, 0] = big
    count = torch.full((3, s), -big)
    count[0, 3], count[1, 7], count[2, 0] = big, big, big  # N = 4, 8, 1
    types = torch.zeros(3, s, k + 1)
    types[..., 0] = big  # the empty logit is ignored: the count decides emptiness
    types[..., 3] = big / 2  # unused entry 2 is never taken
    types[..., 1:3] = big / 4 * torch.tensor([1.0, 1.0])  # between Na and Cl
    raw = {"palette_logits": palette, "type_logits": types, "count_logits": count,
           "coord_vec": torch.randn(3, s, 3, 2), "lattice_std": torch.zeros(3, 6)}
    z = head.sample(raw, generator=torch.Generator().manual_seed(0)).species.argmax(-1)
    for row, n in zip(z, (4, 8, 1), strict=True):
        assert (row[:n] > 0).all() and (row[n:] == 0).all()
        assert set(row[:n].tolist()) <= {11, 17}


def test_count_head_likelihood_and_gradients(counted):
    cfg, dom, ds, model = counted
    t = ds.tensors.subset(torch.arange(8))
    raw = model.generator(model.encoder(t)[0], torch.zeros(8, 1))
    assert raw["count_logits"].shape == (8, 20)
    rec = model.generator.head.reconstruction_loss(raw, t)
    assert set(rec) == {"count", "palette", "sites", "coords", "lattice"}
    n = (t.z > 0).sum(1)
    expected = torch.nn.functional.cross_entropy(raw["count_logits"], n - 1)
    assert torch.allclose(rec["count"], expected)
    model.zero_grad()
    model.discriminator(model.generator.head.sample(raw)).realism.sum().backward()
    head = model.generator.head
    assert head.types.weight.grad.abs().sum() > 0  # the entries stay differentiable
    assert head.count[-1].weight.grad is None  # the count learns from the likelihood alone


def test_count_head_keeps_existing_generator_keys():
    from design.config import generator_key

    assert generator_key(tiny_config(model={"site_count": False})) == generator_key(tiny_config())
    assert generator_key(tiny_config(model={"site_count": True})) != generator_key(tiny_config())
