"""Candidate tables: candidates <-> pandas DataFrame <-> CSV files (written atomically).

Columns: ``id``, ``round``, domain description (formula, sizes, ...), scores (``realism``,
``penalty``, ``pred_<property>``), flags (``structural_valid``, ``compositional_valid``,
``valid``, ``unique``, ``novel``), ``reasons`` for invalid ones, and ``structure`` (CIF or
SMILES text) in the internal per-round files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from design.domains.base import Candidate, Domain
from design.utils import atomic_path

TEXT_COLUMN = "structure"


def to_table(candidates: list[Candidate], domain: Domain, round_index: int | None = None, text: bool = True) -> pd.DataFrame:
    rows = []
    for c in candidates:
        row: dict = {"id": c.id}
        if round_index is not None:
            row["round"] = round_index
        row.update(domain.describe(c.obj))
        for k, v in c.scores.items():
            row[k] = bool(v) if k in ("unique", "novel") else v
        if c.check is not None:
            row["structural_valid"] = bool(c.check.structural)
            row["compositional_valid"] = bool(c.check.compositional)
            row["valid"] = bool(c.check.valid)
            row["reasons"] = "; ".join(c.check.reasons)
        if text:
            row[TEXT_COLUMN] = domain.serialize(c.obj)
        rows.append(row)
    return pd.DataFrame(rows)


def from_table(table: pd.DataFrame, domain: Domain) -> list[Candidate]:
    """Rebuild candidates (objects from the text column; scores from numeric columns; no check)."""
    if TEXT_COLUMN not in table:
        raise ValueError(f"candidate table has no {TEXT_COLUMN!r} column; it was written without structures")
    score_cols = [c for c in table.columns if c in ("realism", "penalty") or c.startswith("pred_")]
    out = []
    for row in table.itertuples(index=False):
        r = row._asdict()
        scores = {k: float(r[k]) for k in score_cols}
        for flag in ("unique", "novel"):
            if flag in r:
                scores[flag] = float(bool(r[flag]))
        out.append(Candidate(id=str(r["id"]), obj=domain.deserialize(r[TEXT_COLUMN]), scores=scores))
    return out


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])
