"""Adversarial losses, selectable by name in ``train.gan_loss``.

Each loss maps realism scores of real and generated batches ([B] tensors) to scalar losses for
the discriminator and for the generator. ``label_smoothing`` is one-sided: real targets become
``1 - label_smoothing`` for the losses that use targets (minimax, non_saturating, relativistic).
``wgan_gp`` returns the critic loss without its gradient penalty; the trainer adds it
(``needs_gradient_penalty``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Scores = torch.Tensor


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent dimensions, averaged over the batch (the VAE term)."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def _bce(logits: Scores, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@dataclass(frozen=True)
class GanLoss:
    name: str
    d_loss: Callable[[Scores, Scores, float], torch.Tensor]
    g_loss: Callable[[Scores, Scores], torch.Tensor]
    needs_gradient_penalty: bool = False


def _minimax_d(real, fake, ls):
    return _bce(real, 1.0 - ls) + _bce(fake, 0.0)


def _minimax_g(fake, real):
    # minimise log(1 - D(G(z))) = -BCE(fake, 0)
    return -_bce(fake, 0.0)


def _ns_g(fake, real):
    return _bce(fake, 1.0)


def _hinge_d(real, fake, ls):
    return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()


def _hinge_g(fake, real):
    return -fake.mean()


def _ra_d(real, fake, ls):
    return _bce(real - fake.mean(), 1.0 - ls) + _bce(fake - real.mean(), 0.0)


def _ra_g(fake, real):
    return _bce(fake - real.mean(), 1.0) + _bce(real - fake.mean(), 0.0)


def _wgan_d(real, fake, ls):
    return fake.mean() - real.mean()


def _wgan_g(fake, real):
    return -fake.mean()


LOSSES: dict[str, GanLoss] = {
    "minimax": GanLoss("minimax", _minimax_d, _minimax_g),
    "non_saturating": GanLoss("non_saturating", _minimax_d, _ns_g),
    "hinge": GanLoss("hinge", _hinge_d, _hinge_g),
    "relativistic": GanLoss("relativistic", _ra_d, _ra_g),
    "wgan_gp": GanLoss("wgan_gp", _wgan_d, _wgan_g, needs_gradient_penalty=True),
}


def get_loss(name: str) -> GanLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown gan_loss {name!r}; choose one of {sorted(LOSSES)}") from None
