import pytest
import torch

from design.data import training_set
from design.domains import build_domain
from design.training import trainer as trainer_mod
from design.training.checkpoint import load_checkpoint
from design.training.trainer import RESUME_NAME, Trainer

from testkit import tiny_config


def _train(cfg, workdir):
    dom = build_domain(cfg)
    ds = training_set(dom, cfg)
    return Trainer(cfg, dom, ds, workdir).run()


@pytest.mark.parametrize("site_count", [False, True])
def test_overfits_a_tiny_set(tmp_path, site_count):
    # VAE only (no adversary): 16 crystals, reconstruction must fall far below its starting value
    cfg = tiny_config(
        data={"limit": 16},
        model={"hidden": 64, "site_dim": 32, "site_count": site_count},
        train={"epochs": 120, "batch_size": 16, "adv_weight": 0.0, "beta_kl": 0.0, "kl_warmup_epochs": 0,
               "fm_weight": 0.0, "prop_weight": 0.0, "penalty_weight": 0.0, "lr_g": 3e-3},
    )
    hist = _train(cfg, tmp_path).history
    first, last = hist[0], hist[-1]
    assert last["rec_palette"] < 0.25 * first["rec_palette"]
    assert last["rec_sites"] < 0.25 * first["rec_sites"]
    assert last["rec_lattice"] < 0.25 * first["rec_lattice"]
    assert last["rec_coords"] < 0.6 * first["rec_coords"]
    if site_count:
        assert last["rec_count"] < 0.25 * first["rec_count"]


def test_same_seed_same_history(tmp_path):
    cfg = tiny_config()
    a = _train(cfg, tmp_path / "a").history
    b = _train(cfg, tmp_path / "b").history
    strip = lambda h: [{k: v for k, v in row.items() if k not in ("time_s", "cpu_s")} for row in h]  # noqa: E731
    assert strip(a) == strip(b)


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = tiny_config(train={"epochs": 3})
    full = _train(cfg, tmp_path / "full")

    calls = {"n": 0}
    original = Trainer.monitors

    def dying_monitors(self):
        calls["n"] += 1
        if calls["n"] == 2:  # dies in epoch 2, after epoch 1 was checkpointed
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "monitors", dying_monitors)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, tmp_path / "cut")
    cut = load_checkpoint(tmp_path / "cut" / RESUME_NAME)
    assert cut["epoch"] == 1 and cut["wall_s"] > 0
    monkeypatch.setattr(Trainer, "monitors", original)
    resumed = _train(cfg, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    assert resumed.wall_s > cut["wall_s"]  # training time counts the interrupted session too
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert 0 < cut["cpu_s"] < b["train_info"]["cpu_s"] and b["train_info"]["threads"] >= 1  # CPU time too
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert not (tmp_path / "cut" / RESUME_NAME).exists()


def test_trains_with_discriminator_augmentation(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "d_augment_jitter": 0.05, "d_augment_permute": True})
    hist = _train(cfg, tmp_path).history
    assert all(v == v for v in hist[-1].values()) and "d_adv" in hist[-1]


@pytest.mark.parametrize("loss", ["hinge", "wgan_gp", "relativistic", "minimax"])
def test_every_gan_loss_trains(tmp_path, loss):
    cfg = tiny_config(train={"epochs": 1, "gan_loss": loss}, model={"spectral_norm": loss != "wgan_gp"})
    hist = _train(cfg, tmp_path).history
    assert all(v == v for v in hist[-1].values())  # no NaN
    assert "d_adv" in hist[-1]
    if loss == "wgan_gp":
        assert hist[-1]["d_gp"] >= 0


def test_checkpoint_holds_config_and_history(tiny_checkpoint):
    blob = load_checkpoint(tiny_checkpoint)
    assert blob["complete"] and blob["epoch"] == 2
    assert blob["config"]["train"]["epochs"] == 2
    assert [row["epoch"] for row in blob["history"]] == [1, 2]
    assert {"mon_unique", "mon_valid", "mon_realism_gap", "rec_palette", "rec_coords"} <= set(blob["history"][0])
    assert trainer_mod.FINAL_NAME == tiny_checkpoint.name


def _poison_generator_steps(monkeypatch, bad_calls):
    """Make the generator loss NaN on the given (1-based) calls of _g_step."""
    calls = {"n": 0}
    original = Trainer._g_step

    def g_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] in bad_calls:
            out = original(self, *args, **kwargs)  # a real step happened: the fault must undo it
            for p in self.model.generator.parameters():
                p.data.fill_(float("nan"))
                break
            out["skipped_steps"] = 1
            return out
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_g_step", g_step)


def test_non_finite_step_restores_state_and_lowers_learning_rate(tmp_path, monkeypatch, caplog):
    cfg = tiny_config(train={"epochs": 2})
    _poison_generator_steps(monkeypatch, {2})
    with caplog.at_level("WARNING"):
        result = _train(cfg, tmp_path)
    last = result.history[-1]
    assert last["faults"] == 1 and result.history[0]["skipped_steps"] == 1
    assert last["lr_g"] == pytest.approx(cfg.train.lr_g * cfg.train.fault_lr_factor)
    blob = load_checkpoint(result.checkpoint)
    assert all(torch.isfinite(v).all() for v in blob["model"].values() if v.is_floating_point())
    assert "non-finite loss or gradient (fault 1" in caplog.text


def test_too_many_faults_stop_with_a_clear_error(tmp_path, monkeypatch):
    cfg = tiny_config(train={"epochs": 2, "max_faults": 1})
    _poison_generator_steps(monkeypatch, {1, 2})
    with pytest.raises(trainer_mod.TrainingDiverged, match="train.max_faults=1"):
        _train(cfg, tmp_path)


def test_collapse_is_flagged(tmp_path, caplog):
    # a threshold above 1 flags every epoch: the metric and the warning are wired
    cfg = tiny_config(train={"epochs": 1, "collapse_uniqueness": 1.0})
    with caplog.at_level("WARNING"):
        hist = _train(cfg, tmp_path).history
    unique = hist[-1]["mon_unique"]
    assert hist[-1]["collapse_warning"] == float(unique < 1.0)
    assert ("possible mode collapse" in caplog.text) == (unique < 1.0)


@pytest.mark.parametrize(("species_grad", "cell_grad"), [(False, True), (False, False), (True, False)])
def test_what_discriminator_gradients_may_shape(species_grad, cell_grad):
    from design.domains.crystal.tensors import CrystalBatch

    cfg = tiny_config(train={"d_species_grad": species_grad, "d_cell_grad": cell_grad})
    trainer = Trainer(cfg, build_domain(cfg), None, "unused")
    leaves = [torch.rand(2, 3, 5, requires_grad=True), torch.rand(2, 3, 3, requires_grad=True),
              torch.rand(2, 6, requires_grad=True)]
    seen = trainer._through_d(CrystalBatch(*leaves))
    assert seen.frac.requires_grad  # geometry always learns from D
    assert seen.species.requires_grad == species_grad
    assert seen.lattice.requires_grad == cell_grad


def test_cosine_schedule_decays_both_learning_rates(tmp_path):
    cfg = tiny_config(train={"epochs": 3, "lr_schedule": "cosine", "lr_final": 0.1})
    hist = _train(cfg, tmp_path).history
    lrs = [row["lr_g"] for row in hist]  # the rate of each epoch's last step
    assert lrs[0] > lrs[1] > lrs[2]
    assert lrs[2] == pytest.approx(cfg.train.lr_g * 0.1)  # the last step runs at lr_final
    assert lrs[0] < cfg.train.lr_g
    # options added later stay out of the generator key at their defaults
    assert "lr_schedule" not in tiny_config().generator_part()["train"]


def test_relative_feature_matching_is_scale_free(tmp_path):
    """With ``fm_relative`` the feature-matching term is the distance in units of the real features'
    mean square: scaling the discriminator's features leaves it unchanged; the absolute one grows."""
    from design.models.vaegan import DiscOutput

    values = {}
    for relative in (False, True):
        cfg = tiny_config(train={"epochs": 1, "fm_relative": relative, "fm_weight": 0.1})
        dom = build_domain(cfg)
        tr = Trainer(cfg, dom, training_set(dom, cfg), tmp_path / str(relative))
        tr._setup()
        start = {k: v.clone() for k, v in tr.model.state_dict().items()}
        idx = torch.arange(cfg.train.batch_size)
        t = tr.tensors_all.subset(idx)
        values[relative] = []
        for scale in (1.0, 10.0):
            tr.model.load_state_dict(start)  # a step updates the weights: every call starts from the same ones
            torch.manual_seed(0)
            handle = tr.model.discriminator.register_forward_hook(
                lambda mod, inp, res, s=scale: DiscOutput(res.realism, res.properties, res.features * s))
            try:
                values[relative].append(tr._g_step(t, dom.real_batch(t), tr.ystd_all[idx], 0, True)["fm"])
            finally:
                handle.remove()
    assert values[False][1] == pytest.approx(100 * values[False][0], rel=1e-3)
    assert values[True][1] == pytest.approx(values[True][0], rel=1e-3)
