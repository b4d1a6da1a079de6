"""Candidate tables: candidates <-> pandas DataFrame <-> CSV files (written atomically).

Columns: ``id``, ``round``, domain description (formula, sizes, ...), scores (``realism``,
``penalty``, ``pred_<property>``), flags (``structural_valid``, ``compositional_valid``,
``valid``, ``unique``, ``novel``), ``reasons`` for invalid ones, and ``structure`` (CIF or
SMILES text) in the internal per-round files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from design.domains.base import Candidate, Domain
from design.utils import atomic_path

log = logging.getLogger(__name__)

TEXT_COLUMN = "structure"


def to_table(candidates: list[Candidate], domain: Domain, round_index: int | None = None, text: bool = True) -> pd.DataFrame:
    rows = []
    for c, described in zip(candidates, domain.describe_many([c.obj for c in candidates]), strict=True):
        row: dict = {"id": c.id}
        if round_index is not None:
            row["round"] = round_index
        row.update(described)
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


def from_table(table: pd.DataFrame, domain: Domain, skip_unreadable: bool = False) -> list[Candidate]:
    """Rebuild candidates (objects from the text column; scores from numeric columns; no check).

    With ``skip_unreadable`` a row whose text does not parse back (e.g. an invalid sample with no
    atoms) is left out and logged instead of raising.
    """
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
        try:
            obj = domain.deserialize(r[TEXT_COLUMN])
        except Exception as err:  # parsers raise many types on text they cannot read
            if not skip_unreadable:
                raise ValueError(f"candidate {r['id']!r}: its {TEXT_COLUMN} text does not parse ({err!r})") from err
            log.warning("candidate %s left out: its %s text does not parse (%r)", r["id"], TEXT_COLUMN, err)
            continue
        out.append(Candidate(id=str(r["id"]), obj=obj, scores=scores))
    return out


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])
