"""Dataset resolution (cache, mirror, URL with checksum) and loaders."""

from __future__ import annotations

from typing import TYPE_CHECKING

from design.data.sources import DataNotFoundError, resolve

if TYPE_CHECKING:
    from design.config import RunConfig
    from design.domains.base import Domain, EncodedDataset


def training_set(domain: Domain, config: RunConfig) -> EncodedDataset:
    """The generator's training split with its property labels, as ``config.data`` describes it."""
    d = config.data
    return domain.load_dataset(d.train, list(d.properties), d.limit, d.property_table)


def training_structures(domain: Domain, config: RunConfig) -> list:
    """The training samples novelty is judged against: with a ``data.property_table`` (labels that
    cover part of the split) every usable row, labelled or not; else the training set itself."""
    d = config.data
    ds = domain.load_dataset(d.train, [], d.limit) if d.property_table else training_set(domain, config)
    return domain.reference_objects(ds)


__all__ = ["DataNotFoundError", "resolve", "training_set", "training_structures"]
