"""Domains: the chemistry-aware parts of the pipeline, one subpackage each, chosen by name."""

from __future__ import annotations

from design.config import RunConfig
from design.domains.base import Candidate, Domain, DomainNetworks, EncodedDataset


def build_domain(config: RunConfig) -> Domain:
    """The domain named by ``config.domain``, set up from the config's data/penalty/filter sections."""
    if config.domain == "crystal":
        from design.domains.crystal import CrystalDomain

        return CrystalDomain(
            max_sites=config.data.max_sites,
            penalty=config.penalty,
            max_elements_smact=config.filter.max_elements_smact,
        )
    if config.domain == "molecule":
        from design.domains.molecule import MoleculeDomain

        return MoleculeDomain(config.molecule, seed=config.seed)
    raise ValueError(f"unknown domain {config.domain!r}; known: crystal, molecule")


__all__ = ["Candidate", "Domain", "DomainNetworks", "EncodedDataset", "build_domain"]
