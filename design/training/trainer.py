"""VAE-GAN training loop: domain-agnostic, seeded, resumable, with per-epoch collapse monitors.

Per batch of real samples x with standardised properties y:

* discriminator step(s): adversarial loss on x vs prior samples G(z ~ N(0, I), c ~ data) plus the
  auxiliary property loss on real data (its property head learns y from x);
* encoder/generator step:
  ``reconstruction(G(z|x, y), x) + beta * KL + fm * |D_feat(x) - D_feat(x_rec)|^2
  + adv * L_G(D(G(z, c))) + cond * |D_prop(G(z, c)) - c|^2 + lambda * penalty(G(z, c), x_rec)``.

``train.adv_samples`` sets how many prior samples G(z, c) a step decodes; with ``adv_weight`` 0 and
``train.realism_critic`` the discriminator still learns real vs generated (a critic for rankings)
while the generator's loss has no adversarial term, from ``adv_start_epoch`` or, with
``train.critic_epochs``, in that many epochs after the generator's last (the generator frozen, the
critic's learning rate on a cosine of its own; with ``train.d_after_generator`` the discriminator,
property heads included, learns only there: G's epochs take no discriminator step). With
``train.penalty_prior`` false the penalty scores the soft reconstruction only, so a step without
adversarial or conditioning terms decodes no prior samples for the generator.
``train.lr_schedule: cosine`` decays both learning rates step by step to ``train.lr_final`` of their base.
``train.precision`` bf16 (or auto, where the device has bf16 units) runs the steps' forward passes under
autocast to bfloat16 (domains with ``trains_in_bf16``); the weights, their gradients and the optimiser
state stay float32, and prior samples (the critic's, the monitors') are drawn in float32, as the
generator API draws them.

Every epoch refits the sampling prior (a Gaussian over the training set's posterior means, see
``design/models/latent_prior.py``), appends a history row (mean losses, monitors on a fixed
sample from that prior: uniqueness, fast structural validity, mean penalty, realism gap) and writes
``last.pt`` (weights, optimiser and RNG state), so a killed run resumes where it stopped. The
finished generator is ``generator.pt``.

Faults: a step whose loss or gradient is not finite is skipped; the weights and optimiser states
go back to the start of the epoch, both learning rates are multiplied by ``train.fault_lr_factor``,
and a warning is logged. After ``train.max_faults`` faults training stops with
:class:`TrainingDiverged` (``last.pt`` of the last finished epoch is kept). An epoch whose
monitor-sample uniqueness is below ``train.collapse_uniqueness`` is logged as a warning and as the
history metric ``collapse_warning`` = 1.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from design.config import RunConfig, same_generator
from design.domains.base import Domain, EncodedDataset
from design.models import VAEGAN, build_model
from design.models.latent_prior import GaussianPrior
from design.training.checkpoint import load_checkpoint, save_checkpoint
from design.training.losses import gaussian_kl, get_loss
from design.utils import autocast_dtype, resolve_device, seed_everything

log = logging.getLogger(__name__)

FINAL_NAME = "generator.pt"
RESUME_NAME = "last.pt"


class TrainingDiverged(RuntimeError):
    """More non-finite steps than ``train.max_faults``."""


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict[str, float]]
    wall_s: float
    resumed_from_epoch: int


class Trainer:
    def __init__(self, config: RunConfig, domain: Domain, train: EncodedDataset, workdir: str | Path):
        self.config = config
        self.domain = domain
        self.train_data = train
        self.workdir = Path(workdir)
        self.device = resolve_device(config.train.device)
        self.gan = get_loss(config.train.gan_loss)
        self.autocast = autocast_dtype(config.train.precision, self.device, domain.trains_in_bf16,
                                       f"the {domain.name} domain")

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.config
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        log.info("training steps in %s on %s (train.precision: %s)", self.precision, self.device, cfg.train.precision)
        seed_everything(cfg.seed)
        self.state = self.domain.fit_state(self.train_data)
        y = self.train_data.y
        self.y_mean = y.mean(0)
        self.y_std = y.std(0).clamp(min=1e-6) if len(y) > 1 else torch.ones(y.shape[1])
        self.model: VAEGAN = build_model(cfg, self.domain, self.state).to(self.device)
        self.penalty = self.domain.build_penalty().to(self.device)
        gen_params = [*self.model.encoder.parameters(), *self.model.generator.parameters()]
        self.opt_g = torch.optim.Adam(gen_params, lr=cfg.train.lr_g, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=cfg.train.lr_d, betas=(0.5, 0.999))
        self.ystd_all = ((y - self.y_mean) / self.y_std).to(self.device)
        start = time.time()
        self.tensors_all = self.domain.training_tensors(self.train_data.tensors, self.model).to(self.device)
        log.info("training tensors of %d samples ready in %.1fs", len(self.train_data), time.time() - start)
        g = torch.Generator().manual_seed(cfg.seed + 7919)
        m = min(cfg.train.monitor_samples, len(self.train_data))
        self.monitor_eps = torch.randn(cfg.train.monitor_samples, cfg.model.latent_dim, generator=g).to(self.device)
        self.prior = GaussianPrior.standard(cfg.model.latent_dim, self.device)
        cidx = torch.randint(len(self.train_data), (cfg.train.monitor_samples,), generator=g)
        self.monitor_c = self.ystd_all[cidx.to(self.device)]
        self.monitor_real = torch.arange(m, device=self.device)
        if self._augmenting:  # a domain without augmentation refuses here, not mid-epoch
            self._augment(self.domain.real_batch(self.tensors_all.subset(torch.arange(1, device=self.device))))
        bank = torch.randperm(len(self.train_data), generator=g)[:4096]
        self.condition_bank = self.ystd_all[bank.to(self.device)].detach().cpu()

    def payload(self, epoch: int, history: list[dict], complete: bool, with_optim: bool) -> dict[str, Any]:
        blob = {
            "config": self.config.model_dump(mode="json"),
            "domain": self.domain.name,
            "state": self.state,
            "property_names": list(self.train_data.property_names),
            "property_mean": self.y_mean.tolist(),
            "property_std": self.y_std.tolist(),
            "condition_bank": self.condition_bank,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "latent_prior": self.prior.state(),
            "history": history,
            "epoch": epoch,
            "faults": self.faults,
            "complete": complete,
            "train_info": {
                "n_train": len(self.train_data),
                "skipped_rows": dict(self.train_data.skipped),
                "device": str(self.device),
                "precision": self.precision,
                "torch": str(torch.__version__),
            },
        }
        if with_optim:
            blob["optim_g"] = self.opt_g.state_dict()
            blob["optim_d"] = self.opt_d.state_dict()
            blob["rng"] = torch.get_rng_state()
        return blob

    def _try_resume(self) -> tuple[int, list[dict]]:
        path = self.workdir / RESUME_NAME
        if not path.is_file():
            return 0, []
        blob = load_checkpoint(path)
        if not same_generator(blob["config"], self.config):
            log.warning("%s was written for another config; starting afresh", path)
            return 0, []
        self.model.load_state_dict(blob["model"])
        self.prior = GaussianPrior.from_state(blob["latent_prior"]).to(self.device)
        self.opt_g.load_state_dict(blob["optim_g"])
        self.opt_d.load_state_dict(blob["optim_d"])
        torch.set_rng_state(blob["rng"])
        self.faults = int(blob.get("faults", 0))
        self.wall_before = float(blob.get("wall_s", 0.0))  # time spent before the interruption
        self.cpu_before = float(blob.get("cpu_s", 0.0))
        self._set_lr()
        log.info("resuming training at epoch %d from %s", blob["epoch"] + 1, path)
        return int(blob["epoch"]), list(blob["history"])

    # ------------------------------------------------------------------ steps
    @property
    def precision(self) -> str:
        """What the training steps compute in: ``bf16`` (autocast) or ``fp32``."""
        return "fp32" if self.autocast is None else "bf16"

    def _forward(self, autocast: bool = True):
        """The context of a step's forward pass: autocast to ``train.precision``'s dtype, or none; with
        ``autocast`` false, inside one, back to float32 (prior samples are drawn as the generator API
        draws them)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=autocast)

    def _prior(self, y: torch.Tensor):
        """Latent samples for the adversarial game, conditioning and penalty, and the conditions they
        are decoded with (drawn from the batch's): ``train.adv_samples`` of them, at most the batch."""
        tc = self.config.train
        n = min(tc.adv_samples or len(y), len(y))
        if tc.adv_prior == "fitted":
            z = self.prior.sample(n)
        else:
            z = torch.randn(n, self.config.model.latent_dim, device=self.device)
        c = y[torch.randperm(len(y), device=self.device)[:n]]
        return z, c

    @torch.no_grad()
    def latent_means(self) -> torch.Tensor:
        """[N, Z] posterior means of all training samples."""
        self.model.eval()
        try:
            mus = []
            for i in range(0, len(self.train_data), 1024):
                idx = torch.arange(i, min(i + 1024, len(self.train_data)), device=self.device)
                mus.append(self.model.encoder(self.tensors_all.subset(idx))[0])
            return torch.cat(mus)
        finally:
            self.model.train()

    def _sample(self, raw):
        return self.model.generator.head.sample(raw, tau=self.config.train.gumbel_tau)

    def _d_step(self, real, y, realism: bool) -> dict[str, float]:
        tc = self.config.train
        D = self.model.discriminator
        out: dict[str, float] = {}
        for _ in range(tc.n_critic):
            with self._forward():
                d_real = D(real)
                loss = tc.prop_weight * F.mse_loss(d_real.properties.float(), y)
                out["d_prop"] = float(loss.detach()) / max(tc.prop_weight, 1e-12)
                if realism:
                    with torch.no_grad(), self._forward(autocast=False):
                        z, c = self._prior(y)
                        fake = self._sample(self.model.generator(z, c)).detach()
                    d_fake = D(self._augment(fake))
                    real_realism = D(self._augment(real)).realism if self._augmenting else d_real.realism
                    adv = self.gan.d_loss(real_realism.float(), d_fake.realism.float(), tc.label_smoothing)
                    loss = loss + adv
                    out["d_adv"] = float(adv.detach())
                    if self.gan.needs_gradient_penalty:
                        gp = self._gradient_penalty(real, fake)
                        loss = loss + tc.gp_weight * gp
                        out["d_gp"] = float(gp.detach())
            if not torch.isfinite(loss):
                out["skipped_steps"] = out.get("skipped_steps", 0) + 1
                continue
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(D.parameters(), tc.grad_clip)
            if not torch.isfinite(norm):
                self.opt_d.zero_grad(set_to_none=True)
                out["skipped_steps"] = out.get("skipped_steps", 0) + 1
                continue
            self.opt_d.step()
        return out

    def _gradient_penalty(self, real, fake) -> torch.Tensor:
        alpha = torch.rand(len(real), device=self.device)
        mixed = self.domain.interpolate(real, fake, alpha)
        leaves = [t for t in vars(mixed).values() if torch.is_tensor(t)]
        for t in leaves:
            t.requires_grad_(True)
        score = self.model.discriminator(mixed).realism
        grads = torch.autograd.grad(score.sum(), leaves, create_graph=True)
        norm = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads) + 1e-12)
        return ((norm - 1.0) ** 2).mean()

    def _g_step(self, t, real, y, epoch: int, adv_on: bool) -> dict[str, float]:
        tc = self.config.train
        D = self.model.discriminator
        D.requires_grad_(False)
        try:
            with self._forward():
                loss, out = self._g_loss(t, real, y, epoch, adv_on)
            if not torch.isfinite(loss):
                out["skipped_steps"] = 1
                return out
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for grp in self.opt_g.param_groups for p in grp["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            if not torch.isfinite(norm):  # an exploding or NaN gradient: skip the step, keep the weights
                self.opt_g.zero_grad(set_to_none=True)
                out["skipped_steps"] = 1
                return out
            self.opt_g.step()
            return out
        finally:
            D.requires_grad_(True)

    def _g_loss(self, t, real, y, epoch: int, adv_on: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The encoder/generator loss of a batch (D frozen) and its parts as numbers."""
        tc = self.config.train
        m = self.model
        D = m.discriminator
        mu, logvar = (v.float() for v in m.encoder(t))  # the latent and its KL in float32 under autocast
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        raw = m.generator(z, y)
        head = m.generator.head
        if hasattr(head, "reconstruct"):  # likelihood and soft reconstruction from one pass
            rec, x_rec = head.reconstruct(raw, t, tau=tc.gumbel_tau)
        else:
            rec, x_rec = head.reconstruction_loss(raw, t), None
        kl = gaussian_kl(mu, logvar)
        warm = min(1.0, (epoch + 1) / tc.kl_warmup_epochs) if tc.kl_warmup_epochs else 1.0
        loss = sum(rec.values()) + tc.beta_kl * warm * kl
        if x_rec is None:
            x_rec = self._sample(raw)
        out = {f"rec_{k}": float(v.detach()) for k, v in rec.items()}
        out["kl"] = float(kl.detach())
        with torch.no_grad():
            d_real = D(real)
        through_d = self._through_d
        if tc.fm_weight > 0:
            fm = (D(through_d(x_rec)).features - d_real.features).pow(2).sum(1).mean()
            if tc.fm_relative:  # in units of the real features' mean square: D's scale cannot inflate it
                fm = fm / d_real.features.pow(2).sum(1).mean().clamp(min=1e-6)
            loss = loss + tc.fm_weight * fm
            out["fm"] = float(fm.detach())
        cond_on = tc.cond_weight > 0 and epoch >= tc.adv_start_epoch
        if adv_on or cond_on or tc.penalty_prior:
            zp, cp = self._prior(y)
            fake = self._sample(m.generator(zp, cp))
        if adv_on or cond_on:
            # measured: straight-through gradients from D into the discrete element choices
            # wreck reconstruction; by default D's gradient shapes geometry only
            d_fake = D(self._augment(through_d(fake)))
            if adv_on:
                if self._augmenting:
                    with torch.no_grad():
                        real_realism = D(self._augment(real)).realism
                else:
                    real_realism = d_real.realism
                g_adv = self.gan.g_loss(d_fake.realism, real_realism)
                loss = loss + tc.adv_weight * g_adv
                out["g_adv"] = float(g_adv.detach())
            if cond_on:
                g_prop = F.mse_loss(d_fake.properties, cp)
                loss = loss + tc.cond_weight * g_prop
                out["g_prop"] = float(g_prop.detach())
        if tc.penalty_prior:
            pen = 0.5 * (self.penalty(fake).mean() + self.penalty(x_rec).mean())
        else:
            pen = self.penalty(x_rec).mean()
        pen = pen.float()
        out["penalty"] = float(pen.detach())
        if tc.penalty_weight > 0:
            loss = loss + tc.penalty_weight * pen
        out["g_total"] = float(loss.detach())
        return loss, out

    def _through_d(self, batch):
        """What of a generated batch D's gradients may shape (``train.d_species_grad``, ``d_cell_grad``)."""
        tc = self.config.train
        if not tc.d_species_grad:
            batch = self.domain.detach_species(batch)
        if not tc.d_cell_grad:
            batch = self.domain.detach_cell(batch)
        return batch

    # ------------------------------------------------------------------ augmentation
    @property
    def _augmenting(self) -> bool:
        tc = self.config.train
        return tc.d_augment_jitter > 0 or tc.d_augment_permute

    def _augment(self, batch):
        """D's view of an adversarial input (identity unless train.d_augment_* asks otherwise)."""
        if not self._augmenting:
            return batch
        tc = self.config.train
        return self.domain.augment(batch, tc.d_augment_jitter, tc.d_augment_permute)

    # ------------------------------------------------------------------ faults
    def _snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(
            {"model": self.model.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}
        )

    def _set_lr(self, progress: float = 0.0) -> None:
        """Base learning rates x ``fault_lr_factor`` per fault x the schedule at ``progress`` (the
        fraction of all training steps done): constant, or a cosine from 1 down to ``lr_final``."""
        tc = self.config.train
        factor = tc.fault_lr_factor**self.faults
        if tc.lr_schedule == "cosine":
            factor *= tc.lr_final + (1 - tc.lr_final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for opt, base in ((self.opt_g, tc.lr_g), (self.opt_d, tc.lr_d)):
            for group in opt.param_groups:
                group["lr"] = base * factor

    def _recover(self, good: dict[str, Any], epoch: int) -> None:
        """A non-finite step: back to the epoch's start state with lower learning rates."""
        self.faults += 1
        tc = self.config.train
        if self.faults > tc.max_faults:
            raise TrainingDiverged(
                f"training hit a non-finite loss or gradient {self.faults} times (train.max_faults={tc.max_faults}) "
                f"in epoch {epoch + 1}; lower train.lr_g / train.lr_d or raise train.grad_clip. The last finished "
                f"epoch is kept in {self.workdir / RESUME_NAME}"
            )
        self.model.load_state_dict(good["model"])
        self.opt_g.load_state_dict(good["opt_g"])
        self.opt_d.load_state_dict(good["opt_d"])
        self._set_lr()
        log.warning("epoch %d: non-finite loss or gradient (fault %d of at most %d): restored the epoch's start "
                    "state, learning rates now x%.3g", epoch + 1, self.faults, tc.max_faults,
                    tc.fault_lr_factor**self.faults)

    @torch.no_grad()
    def monitors(self) -> dict[str, float]:
        """Collapse monitors on a fixed latent sample (same z every epoch)."""
        m = self.model
        m.eval()
        try:
            z = self.prior.mean + self.monitor_eps @ self.prior.scale_tril.T
            fake = self._sample(m.generator(z, self.monitor_c))
            hard = self.domain.batch_to_tensors(fake)
            keys = self.domain.monitor_keys(hard)
            real = self.domain.real_batch(self.tensors_all.subset(self.monitor_real))
            gap = m.discriminator(real).realism.mean() - m.discriminator(fake).realism.mean()
            return {
                "mon_unique": len(set(keys)) / len(keys),
                "mon_valid": float(self.domain.fast_valid(hard).float().mean()),
                "mon_penalty": float(self.penalty(fake).mean()),
                "mon_realism_gap": float(gap),
            }
        finally:
            m.train()

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        t0, c0 = time.time(), time.process_time()
        self._setup()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg, tc = self.config, self.config.train
        self.faults = 0
        self.last_means: torch.Tensor | None = None  # posterior means behind the latest fitted prior
        self.wall_before = self.cpu_before = 0.0
        start, history = self._try_resume()
        n = len(self.train_data)
        bs = min(tc.batch_size, n)
        total = tc.epochs + (tc.critic_epochs or 0)
        for epoch in range(start, total):
            te, ce = time.time(), time.process_time()
            # after the generator's epochs: the critic's own (``train.critic_epochs``), G frozen
            critic_only = epoch >= tc.epochs
            adv_on = not critic_only and tc.adv_weight > 0 and epoch >= tc.adv_start_epoch
            # D learns real vs generated in the game, or as a critic only (no gradient to G)
            critic_on = adv_on or critic_only or (
                tc.realism_critic and tc.critic_epochs is None and epoch >= tc.adv_start_epoch)
            d_on = critic_on or (tc.prop_weight > 0 and not tc.d_after_generator)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
            sums: dict[str, float] = defaultdict(float)
            steps = 0
            good = self._snapshot()
            per_epoch = n // bs
            # the cosine runs over G's epochs, and again over the critic's own
            phase_start, phase_epochs = (tc.epochs, total - tc.epochs) if critic_only else (0, tc.epochs)
            for step, i in enumerate(range(0, n - bs + 1, bs)):
                if tc.lr_schedule != "constant":
                    self._set_lr(((epoch - phase_start) * per_epoch + step) / max(phase_epochs * per_epoch - 1, 1))
                idx = perm[i : i + bs].to(self.device)
                t = self.tensors_all.subset(idx)
                y = self.ystd_all[idx]
                real = self.domain.real_batch(t)
                parts = self._d_step(real, y, critic_on) if d_on else {}
                if not critic_only:
                    parts.update(self._g_step(t, real, y, epoch, adv_on))
                if parts.get("skipped_steps"):
                    self._recover(good, epoch)
                    sums["skipped_steps"] += parts["skipped_steps"]
                    continue
                for k, v in parts.items():
                    sums[k] += v
                steps += 1
            row = {k: v / max(steps, 1) for k, v in sums.items() if k != "skipped_steps"}
            row["skipped_steps"] = sums.get("skipped_steps", 0.0)
            row["faults"] = float(self.faults)
            row["lr_d"] = self.opt_d.param_groups[0]["lr"]
            if not critic_only:  # a frozen generator keeps its rate (moot) and its prior
                row["lr_g"] = self.opt_g.param_groups[0]["lr"]
                self.last_means = self.latent_means()
                self.prior = GaussianPrior.fit(self.last_means)
            row.update(self.monitors())
            row["collapse_warning"] = float(row["mon_unique"] < tc.collapse_uniqueness)
            if row["collapse_warning"]:
                log.warning("epoch %d: possible mode collapse, uniqueness of the monitor sample %.2f < %.2f",
                            epoch + 1, row["mon_unique"], tc.collapse_uniqueness)
            row["epoch"] = epoch + 1
            row["time_s"] = time.time() - te
            row["cpu_s"] = time.process_time() - ce  # all threads; unlike time_s, not slowed by other jobs
            history.append(row)
            rec = "  ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("rec_"))
            log.info(
                "epoch %d/%d  %s  kl=%.2f penalty=%.3f unique=%.2f valid=%.2f gap=%.2f (%.1fs)",
                epoch + 1, total, rec, row.get("kl", 0), row.get("penalty", 0), row["mon_unique"],
                row["mon_valid"], row["mon_realism_gap"], row["time_s"],
            )
            resume = self.payload(epoch + 1, history, False, with_optim=True)
            resume["wall_s"] = self.wall_before + time.time() - t0
            resume["cpu_s"] = self.cpu_before + time.process_time() - c0
            save_checkpoint(self.workdir / RESUME_NAME, resume)
        wall = self.wall_before + time.time() - t0  # an interrupted run counts all its sessions
        final = self.payload(total, history, True, with_optim=False)
        final["train_info"]["wall_s"] = wall
        # CPU time of this process (all its threads), which other jobs on the machine do not inflate
        final["train_info"]["cpu_s"] = self.cpu_before + time.process_time() - c0
        final["train_info"]["threads"] = torch.get_num_threads()
        # posterior means and standardised properties of the training set: the generator API fits
        # target-focused priors from them (``generate.prior_focus``)
        means = self.last_means if self.last_means is not None else self.latent_means()  # none: resumed at the end
        final["latent_bank"] = {"mu": means.cpu(), "y": self.ystd_all.cpu()}
        path = save_checkpoint(self.workdir / FINAL_NAME, final)
        (self.workdir / RESUME_NAME).unlink(missing_ok=True)
        return TrainResult(path, history, wall, start)
