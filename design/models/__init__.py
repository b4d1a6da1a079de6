"""Generative models. The VAE-GAN composes domain-specific network parts into one hybrid."""

from __future__ import annotations

from design.config import RunConfig
from design.domains.base import Domain
from design.models.vaegan import VAEGAN, DiscOutput


def build_model(config: RunConfig, domain: Domain, state: dict) -> VAEGAN:
    """A fresh VAE-GAN for ``config`` with the training-data statistics ``state`` (see Domain.fit_state)."""
    nets = domain.build_networks(config.model, state)
    return VAEGAN(
        nets,
        latent_dim=config.model.latent_dim,
        hidden=config.model.hidden,
        n_properties=len(config.data.properties),
        use_spectral_norm=config.model.spectral_norm,
    )


__all__ = ["VAEGAN", "DiscOutput", "build_model"]
