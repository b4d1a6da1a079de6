"""The domain-agnostic VAE-GAN hybrid: encoder q(z|x), conditional generator G(z, c), multi-task D(x).

Shapes (B = batch, Z = latent_dim, P = number of properties, H = hidden, F = D feature width):

* ``Encoder``: domain tensors -> (mu [B, Z], logvar [B, Z]).
* ``Generator``: z [B, Z], c [B, P] (standardised property condition) -> raw domain outputs;
  ``generator.head.sample(raw, ...)`` -> differentiable soft batch.
* ``Discriminator``: soft batch -> ``DiscOutput`` with realism logit [B], property predictions
  [B, P] (standardised) and the intermediate features [B, F] used for feature matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from design.domains.base import DomainNetworks


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, body: nn.Module, hidden: int, latent_dim: int):
        super().__init__()
        self.body = body
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, tensors) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(tensors)
        return self.mu(h), self.logvar(h).clamp(-10.0, 6.0)


class Generator(nn.Module):
    def __init__(self, head: nn.Module, latent_dim: int, cond_dim: int, hidden: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.cond_dim = cond_dim
        self.trunk = _mlp([latent_dim + cond_dim, hidden, hidden, hidden])
        self.head = head

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.trunk(torch.cat([z, c], dim=1)))


@dataclass
class DiscOutput:
    realism: torch.Tensor  # [B] logit (or critic score for WGAN)
    properties: torch.Tensor  # [B, P] standardised predictions
    features: torch.Tensor  # [B, F]


class Discriminator(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, n_properties: int, use_spectral_norm: bool):
        super().__init__()
        self.body = body
        self.realism = nn.Linear(feature_dim, 1)
        self.properties = _mlp([feature_dim, feature_dim, n_properties])
        if use_spectral_norm:
            # the realism path is Lipschitz-constrained; the property head is a regressor and stays free
            for module in [*self.body.modules(), self.realism]:
                if isinstance(module, nn.Linear):
                    spectral_norm(module)

    def forward(self, batch) -> DiscOutput:
        f = self.body(batch)
        return DiscOutput(self.realism(f).squeeze(-1), self.properties(f), f)


class VAEGAN(nn.Module):
    """Container of the three networks (one optimiser for encoder+generator, one for D)."""

    def __init__(
        self,
        nets: DomainNetworks,
        latent_dim: int,
        hidden: int,
        n_properties: int,
        use_spectral_norm: bool,
    ):
        super().__init__()
        self.encoder = Encoder(nets.encoder_body, hidden, latent_dim)
        self.generator = Generator(nets.decoder_head, latent_dim, n_properties, hidden)
        self.discriminator = Discriminator(nets.disc_body, nets.feature_dim, n_properties, use_spectral_norm)

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim
