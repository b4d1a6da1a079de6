"""Exact, non-differentiable chemistry of molecules: validity, medicinal-chemistry filters, descriptors.

* **Structural validity**: the SMILES the SELFIES decoder writes parses and sanitises in RDKit
  (valences, aromaticity) and is one non-empty connected molecule. This is MOSES's "valid".
* **Filters** (the compositional stage of the check, MOSES's "Filters" metric): only the atoms
  C, N, S, O, F, Cl, Br (and H); no formal charges; no ring of 8 or more atoms; none of the
  unwanted groups below; none of RDKit's PAINS (A, B, C) patterns.

The unwanted groups are this project's own SMARTS for the kinds of group the MOSES
medicinal-chemistry filters remove (Michael acceptors, reactive alkylating and acylating groups,
strained three-membered heterocycles, peroxides and disulfides, ...). A pattern that matched real
MOSES molecules would not belong to that list; ``tests/unit/test_molecule_chemistry.py`` checks
that the MOSES test split passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from rdkit import Chem, RDLogger
from rdkit.Chem import QED, Crippen, Descriptors

from design.domains.base import CheckReport

ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
MAX_RING_SIZE = 8  # rings with this many atoms or more fail the filters (as in MOSES)

UNWANTED_GROUPS: dict[str, str] = {
    "vinyl nitrile (Michael acceptor)": "[#6]=&!@[#6]-[#6]#[#7]",
    "vinyl sulfone (Michael acceptor)": "[#6]=&!@[#6]-[#16](=[#8])=[#8]",
    "acyclic acrylamide (Michael acceptor)": "[#6]=&!@[#6;!H0]-&!@[#6](=[#8])-&!@[#7]",
    "primary alkyl halide": "[CH2;X4]-[Cl,Br,I]",
    "epoxide": "[#6]1-[#8]-[#6]-1",
    "aziridine": "[#6]1-[#7]-[#6]-1",
    "thiirane": "[#6]1-[#16]-[#6]-1",
    "acyl halide": "[#6X3](=[#8])-[F,Cl,Br,I]",
    "sulfonyl halide": "[#16](=[#8])(=[#8])-[F,Cl,Br,I]",
    "peroxide": "[#8]-[#8]",
    "disulfide": "[#16X2]-[#16X2]",
    "isocyanate / isothiocyanate": "[#7]=[#6]=[#8,#16]",
    "anhydride": "[#6](=[#8])-[#8]-[#6](=[#8])",
    "aldehyde": "[CX3;H1](=O)[#6]",
    "thiol": "[#16X2;H1]",
    "diazo / azo (acyclic)": "[#6]-&!@[#7]=&!@[#7]-&!@[#6]",
}


@dataclass(frozen=True)
class MoleculeCheck(CheckReport):
    """``structural``: sanitises as one connected molecule; ``compositional``: passes the filters."""


@lru_cache(maxsize=1)
def _unwanted_patterns() -> list[tuple[str, Chem.Mol]]:
    out = []
    for name, smarts in UNWANTED_GROUPS.items():
        patt = Chem.MolFromSmarts(smarts)
        if patt is None:  # a programming error in the table above
            raise ValueError(f"unwanted-group SMARTS for {name!r} does not parse: {smarts}")
        out.append((name, patt))
    return out


@lru_cache(maxsize=1)
def _pains_catalog():
    from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

    params = FilterCatalogParams()
    params.AddCatalog(FilterCatalogParams.FilterCatalogs.PAINS)
    return FilterCatalog(params)


def mol_from_smiles(smiles: str) -> Chem.Mol | None:
    """Parse and sanitise; ``None`` for text RDKit rejects (without RDKit's error lines)."""
    if not smiles:
        return None
    RDLogger.DisableLog("rdApp.*")
    try:
        return Chem.MolFromSmiles(smiles)
    finally:
        RDLogger.EnableLog("rdApp.*")


def structural_reasons(mol: Chem.Mol | None) -> list[str]:
    if mol is None:
        return ["does not sanitise"]
    if mol.GetNumAtoms() == 0:
        return ["no atoms"]
    if len(Chem.GetMolFrags(mol)) > 1:
        return ["disconnected fragments"]
    return []


def filter_reasons(mol: Chem.Mol) -> list[str]:
    """Why a sanitised molecule fails the filters (empty when it passes)."""
    reasons = []
    atoms = {a.GetSymbol() for a in mol.GetAtoms()}
    if not atoms <= ALLOWED_ATOMS:
        reasons.append(f"atoms outside C,N,S,O,F,Cl,Br,H: {','.join(sorted(atoms - ALLOWED_ATOMS))}")
    if any(a.GetFormalCharge() != 0 for a in mol.GetAtoms()):
        reasons.append("charged atom")
    rings = mol.GetRingInfo().AtomRings()
    if any(len(r) >= MAX_RING_SIZE for r in rings):
        reasons.append(f"ring of {max(len(r) for r in rings)} atoms (>= {MAX_RING_SIZE})")
    for name, patt in _unwanted_patterns():  # implicit hydrogens count in H and X queries
        if mol.HasSubstructMatch(patt):
            reasons.append(f"unwanted group: {name}")
    match = _pains_catalog().GetFirstMatch(mol)
    if match is not None:
        reasons.append(f"PAINS: {match.GetDescription()}")
    return reasons


def check_mol(mol: Chem.Mol | None) -> MoleculeCheck:
    """The exact check of one molecule (``None`` = text that did not sanitise)."""
    reasons = structural_reasons(mol)
    if reasons:
        return MoleculeCheck(False, False, tuple(reasons))
    reasons = filter_reasons(mol)
    return MoleculeCheck(True, not reasons, tuple(reasons))


def passes_filters(mol: Chem.Mol | None) -> bool:
    return mol is not None and not structural_reasons(mol) and not filter_reasons(mol)


@lru_cache(maxsize=1)
def _sa_scorer():
    """RDKit's contributed synthetic-accessibility scorer (Ertl & Schuffenhauer 2009), shipped in the
    RDKit wheel under ``Contrib/SA_Score``; imported from there once."""
    import importlib.util
    import os

    from rdkit.Chem import RDConfig

    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    if not os.path.isfile(path):
        raise RuntimeError(f"RDKit's SA scorer is missing ({path}); install an RDKit wheel that ships Contrib")
    spec = importlib.util.spec_from_file_location("rdkit_contrib_sascorer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility, 1 (easy) to 10 (hard)."""
    return float(_sa_scorer().calculateScore(mol))


DESCRIPTORS: dict[str, Callable[[Chem.Mol], float]] = {
    "logp": Crippen.MolLogP,  # Wildman-Crippen octanol/water logP (dimensionless, log10)
    "qed": QED.qed,  # quantitative estimate of drug-likeness in [0, 1]
    "mol_weight": Descriptors.MolWt,  # g/mol
    "tpsa": Descriptors.TPSA,  # topological polar surface area, Angstrom^2
    "sa": sa_score,  # synthetic accessibility score, 1 (easy) to 10 (hard)
}


def descriptor(name: str, mol: Chem.Mol) -> float:
    try:
        fn = DESCRIPTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown molecular property {name!r}: it is neither a column of the dataset nor one of the "
            f"computed descriptors {sorted(DESCRIPTORS)}; fix data.properties"
        ) from None
    return float(fn(mol))
