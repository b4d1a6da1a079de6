"""Crystal structures: the tensor form, physics penalty, exact checks and network parts."""

from design.domains.crystal.domain import CrystalDomain

__all__ = ["CrystalDomain"]
