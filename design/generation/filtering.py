"""Filter candidates: exact validity, uniqueness (among themselves and earlier rounds), novelty.

Uniqueness and novelty use the domain's ``fingerprint`` to bucket objects (for crystals the
reduced formula) and its ``equivalent`` inside a bucket (for crystals pymatgen's StructureMatcher
with default tolerances, as in the CDVAE/DiffCSP protocol).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from design.domains.base import Candidate, Domain

log = logging.getLogger(__name__)


@dataclass
class ReferenceIndex:
    """Objects bucketed by fingerprint, for novelty and uniqueness tests."""

    domain: Domain
    buckets: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def build(cls, domain: Domain, objects: Iterable[Any]) -> ReferenceIndex:
        index = cls(domain)
        for obj in objects:
            index.add(obj)
        return index

    def add(self, obj: Any) -> None:
        self.buckets[self.domain.fingerprint(obj)].append(obj)

    def contains(self, obj: Any) -> bool:
        key = self.domain.fingerprint(obj)
        return any(self.domain.equivalent(obj, other) for other in self.buckets.get(key, ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self.buckets.values())


@dataclass
class FilterCounts:
    generated: int = 0
    valid_structural: int = 0
    valid_compositional: int = 0
    valid: int = 0
    unique: int = 0
    novel: int = 0

    def rates(self) -> dict[str, float]:
        g = max(self.generated, 1)
        v = max(self.valid, 1)
        u = max(self.unique, 1)
        return {
            "structural_validity": self.valid_structural / g,
            "compositional_validity": self.valid_compositional / g,
            "validity": self.valid / g,
            "uniqueness": self.unique / v,  # among valid
            "novelty": self.novel / u,  # among valid and unique
        }


def annotate(
    candidates: list[Candidate],
    domain: Domain,
    reference: ReferenceIndex | None,
    seen: ReferenceIndex | None = None,
) -> FilterCounts:
    """Set ``scores['unique']`` and ``scores['novel']`` (1.0 / 0.0) on valid candidates; count everything.

    ``seen`` holds objects accepted in earlier rounds; unique objects of this call are added to it.
    """
    counts = FilterCounts(generated=len(candidates))
    seen = seen if seen is not None else ReferenceIndex(domain)
    unchecked = [c for c in candidates if c.check is None]
    for c, report in zip(unchecked, domain.check_many([c.obj for c in unchecked]), strict=True):
        c.check = report
    for c in candidates:
        counts.valid_structural += int(c.check.structural)
        counts.valid_compositional += int(c.check.compositional)
        c.scores["unique"] = 0.0
        c.scores["novel"] = 0.0
        if not c.check.valid:
            continue
        counts.valid += 1
        if seen.contains(c.obj):
            continue
        seen.add(c.obj)
        c.scores["unique"] = 1.0
        counts.unique += 1
        if reference is None or not reference.contains(c.obj):
            c.scores["novel"] = 1.0
            counts.novel += 1
    return counts


def select(candidates: list[Candidate], require_valid: bool, require_unique: bool, require_novel: bool) -> list[Candidate]:
    """Candidates that pass the required filters (after :func:`annotate`)."""
    keep = []
    for c in candidates:
        if require_valid and not c.valid:
            continue
        if require_unique and not c.scores.get("unique"):
            continue
        if require_novel and not c.scores.get("novel"):
            continue
        keep.append(c)
    return keep
