"""BVSE barrier labels for the Li-containing crystals of the project's datasets.

Sources (paths under the data root, resolved by :func:`design.data.sources.resolve`):

* CDVAE-format CSVs (``material_id``, ``cif``): the mp_20_biternary and mpts_52 splits; mpts_52
  cells are kept up to ``max_sites`` sites (20 by default, as the issue asks);
* OBELiX: ``train_cifs.tar.gz`` (CIFs named by the OBELiX ID). Most OBELiX CIFs have partial
  occupancies; they are kept in the table with the oracle's ``disordered`` failure.

The labels table has one row per structure: ``source``, ``id``, ``formula``, ``n_sites``, the
barriers ``e_1d``, ``e_2d``, ``e_3d`` (eV; ``inf`` = no path below the oracle's ``encut``),
``ok``, ``failure``, ``message``, ``seconds``, ``key`` (the oracle cache key) and ``cif``, so
a model can train from it alone. ``provenance.json`` beside it records the source files with their
sha256, the oracle settings, package versions, the time and the counts.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure

from design.data.sources import resolve, sha256_of
from design.utils import atomic_path, atomic_write_text
from property_models.bvse import BVSESettings, OracleResult

log = logging.getLogger(__name__)

CSV_SOURCES = (
    "crystals/mp_20_biternary/val.csv.gz",
    "crystals/mp_20_biternary/test.csv.gz",
    "crystals/mpts_52/val.csv.gz",
    "crystals/mpts_52/test.csv.gz",
)
OBELIX_CIFS = "conductivity/obelix/train_cifs.tar.gz"
DEFAULT_SOURCES = (*CSV_SOURCES, OBELIX_CIFS)
COLUMNS = ("source", "id", "formula", "n_sites", "e_1d", "e_2d", "e_3d", "ok", "failure", "message", "seconds",
           "key", "cif")
_FORMULA_HAS = r"_chemical_formula_sum\s+['\"]?[^\n]*\b{el}\d"


@dataclass
class LabelEntry:
    source: str
    id: str
    structure: Structure


def _parse_cif(text: str) -> Structure | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(text, fmt="cif")
    except Exception:  # pymatgen raises many types for broken CIF text
        return None


def mentions_element(cifs: pd.Series, element: str) -> pd.Series:
    """[N] bool: whether each CIF text's ``_chemical_formula_sum`` names ``element`` (a fast pre-filter)."""
    return cifs.astype(str).str.contains(_FORMULA_HAS.format(el=element), regex=True)


def csv_entries(relpath: str, element: str = "Li", max_sites: int = 20) -> tuple[list[LabelEntry], dict]:
    """Structures of a CDVAE-format CSV that contain ``element`` and have at most ``max_sites`` sites."""
    df = pd.read_csv(resolve(relpath), usecols=["material_id", "cif"])
    has = mentions_element(df["cif"], element)
    skipped = {"unparsable": 0, "too_many_sites": 0, "without_element": int((~has).sum())}
    out = []
    for mid, cif in zip(df.loc[has, "material_id"], df.loc[has, "cif"], strict=True):
        s = _parse_cif(cif)
        if s is None:
            skipped["unparsable"] += 1
        elif element not in {e.symbol for e in s.composition.elements}:
            skipped["without_element"] += 1
        elif len(s) > max_sites:
            skipped["too_many_sites"] += 1
        else:
            out.append(LabelEntry(relpath, str(mid), s))
    return out, skipped


def tar_entries(relpath: str, element: str = "Li") -> tuple[list[LabelEntry], dict]:
    """Structures of a tar of CIFs (id = file name without ``.cif``) that contain ``element``."""
    skipped = {"unparsable": 0, "without_element": 0}
    out = []
    with tarfile.open(resolve(relpath)) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".cif")), key=lambda m: m.name):
            s = _parse_cif(io.TextIOWrapper(tar.extractfile(m), encoding="utf-8", errors="replace").read())
            if s is None:
                skipped["unparsable"] += 1
            elif element not in {e.symbol for e in s.composition.elements}:
                skipped["without_element"] += 1
            else:
                out.append(LabelEntry(relpath, Path(m.name).stem, s))
    return out, skipped


def collect(relpath: str, element: str = "Li", max_sites: int = 20) -> tuple[list[LabelEntry], dict]:
    """Entries of one source (CSV or tar of CIFs) and what was skipped, by reason."""
    if relpath.endswith((".tar.gz", ".tgz", ".tar")):
        return tar_entries(relpath, element)
    if relpath.endswith((".csv", ".csv.gz")):
        return csv_entries(relpath, element, max_sites)
    raise ValueError(f"source {relpath!r} is neither a CDVAE-format CSV nor a tar of CIFs (.tar.gz)")


def label_rows(entries: Sequence[LabelEntry], results: Sequence[OracleResult]) -> pd.DataFrame:
    """The labels table (see module docstring) for entries and their oracle results."""
    rows = []
    for e, r in zip(entries, results, strict=True):
        rows.append({
            "source": e.source, "id": e.id, "formula": e.structure.composition.reduced_formula,
            "n_sites": len(e.structure), "e_1d": r.e_1d, "e_2d": r.e_2d, "e_3d": r.e_3d, "ok": r.ok,
            "failure": r.failure or "", "message": r.message, "seconds": round(r.seconds, 3), "key": r.key,
            "cif": e.structure.to(fmt="cif"),
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def provenance(sources: Iterable[str], settings: BVSESettings, table: pd.DataFrame, skipped: dict, wall_s: float) -> dict:
    ok = table[table["ok"]]
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "oracle": {"method": "BVSE percolation barriers (bvlain)", **asdict(settings)},
        "sources": {s: {"sha256": sha256_of(resolve(s)), "skipped": skipped.get(s, {})} for s in sources},
        "versions": {p: version(p) for p in ("bvlain", "pymatgen", "numpy")},
        "counts": {
            "rows": len(table),
            "ok": len(ok),
            "finite_e_3d": int((ok["e_3d"] < float("inf")).sum()),
            "failures": table.loc[~table["ok"], "failure"].value_counts().to_dict(),
            "per_source_ok": ok["source"].value_counts().to_dict(),
        },
        "wall_s": round(wall_s, 1),
    }


def write_labels(table: pd.DataFrame, prov: dict, out: str | Path) -> Path:
    """Write ``out`` (CSV, gzip if it ends in .gz) and ``<out stem>.provenance.json`` atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, compression="gzip" if out.name.endswith(".gz") else None)
    atomic_write_text(provenance_path(out), json.dumps(prov, indent=2, default=str))
    return out


DEFAULT_CAP = 5.0  # eV, the oracle's default encut


def oracle_cap(labels: str | Path) -> float:
    """The oracle's ``encut`` (eV) recorded in the labels' provenance, else the default."""
    prov = provenance_path(labels)
    return float(json.loads(prov.read_text())["oracle"]["encut"]) if prov.is_file() else DEFAULT_CAP


def provenance_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(re.sub(r"(\.csv)?(\.gz)?$", "", out.name) + ".provenance.json")


def read_labels(path: str | Path) -> pd.DataFrame:
    """The labels table, with ``failure`` as strings ('' for successes)."""
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a BVSE labels table (missing {missing}); make one with `invdes label bvse`")
    for col in ("failure", "message"):
        df[col] = df[col].fillna("").astype(str)
    return df
