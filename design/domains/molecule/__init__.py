"""The molecule domain: SELFIES token sequences, chemistry penalty, MOSES-style checks, SDF/SMILES files."""

from design.domains.molecule.domain import MoleculeDomain

__all__ = ["MoleculeDomain"]
