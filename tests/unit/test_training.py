import pytest
import torch

from design.domains import build_domain
from design.training import trainer as trainer_mod
from design.training.checkpoint import load_checkpoint
from design.training.trainer import RESUME_NAME, Trainer

from testkit import tiny_config


def _train(cfg, workdir):
    dom = build_domain(cfg)
    ds = dom.load_dataset(cfg.data.train, list(cfg.data.properties), cfg.data.limit)
    return Trainer(cfg, dom, ds, workdir).run()


def test_overfits_a_tiny_set(tmp_path):
    # VAE only (no adversary): 16 crystals, reconstruction must fall far below its starting value
    cfg = tiny_config(
        data={"limit": 16},
        model={"hidden": 64, "site_dim": 32},
        train={"epochs": 120, "batch_size": 16, "adv_weight": 0.0, "beta_kl": 0.0, "kl_warmup_epochs": 0,
               "fm_weight": 0.0, "prop_weight": 0.0, "penalty_weight": 0.0, "lr_g": 3e-3},
    )
    hist = _train(cfg, tmp_path).history
    first, last = hist[0], hist[-1]
    assert last["rec_palette"] < 0.25 * first["rec_palette"]
    assert last["rec_sites"] < 0.25 * first["rec_sites"]
    assert last["rec_lattice"] < 0.25 * first["rec_lattice"]
    assert last["rec_coords"] < 0.6 * first["rec_coords"]


def test_same_seed_same_history(tmp_path):
    cfg = tiny_config()
    a = _train(cfg, tmp_path / "a").history
    b = _train(cfg, tmp_path / "b").history
    strip = lambda h: [{k: v for k, v in row.items() if k != "time_s"} for row in h]  # noqa: E731
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
    assert load_checkpoint(tmp_path / "cut" / RESUME_NAME)["epoch"] == 1
    monkeypatch.setattr(Trainer, "monitors", original)
    resumed = _train(cfg, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert not (tmp_path / "cut" / RESUME_NAME).exists()


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
