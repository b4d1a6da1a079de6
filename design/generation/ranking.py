"""Rank candidates by a weighted sum of z-scored terms.

``score = w_realism * z(realism) - w_penalty * z(penalty) + sum_p w_p * goal_p(z(pred_p))``,
where ``goal`` is +z for ``maximize``, -z for ``minimize``, and -|pred - target| / std for
``target``. z-scores are taken over the candidate set being ranked, so the weights say how much
one standard deviation of each term is worth. A term with zero spread contributes nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from design.config import RankConfig


def _z(x: pd.Series) -> pd.Series:
    sd = float(x.std(ddof=0)) if len(x) > 1 else 0.0
    if not np.isfinite(sd) or sd < 1e-12:
        return pd.Series(np.zeros(len(x)), index=x.index)
    return (x - x.mean()) / sd


def rank_table(table: pd.DataFrame, cfg: RankConfig, target: dict[str, float] | None = None) -> pd.DataFrame:
    """Return ``table`` sorted best-first with ``score`` and ``rank`` (1 = best) columns added."""
    if table.empty:
        return table.assign(score=pd.Series(dtype=float), rank=pd.Series(dtype=int))
    score = cfg.realism_weight * _z(table["realism"]) - cfg.penalty_weight * _z(table["penalty"])
    for prop, weight in cfg.property_weights.items():
        col = f"pred_{prop}"
        if col not in table:
            raise ValueError(f"rank.property_weights names {prop!r} but the table has no column {col!r}")
        goal = cfg.property_goals.get(prop, "maximize")
        if goal == "maximize":
            term = _z(table[col])
        elif goal == "minimize":
            term = -_z(table[col])
        else:
            value = (target or {}).get(prop)
            if value is None:
                raise ValueError(f"rank goal 'target' for {prop!r} needs generate.target.{prop}")
            dev = (table[col] - value).abs()
            sd = float(table[col].std(ddof=0)) or 1.0
            term = -dev / sd
        score = score + weight * term
    out = table.assign(score=score.round(6)).sort_values(["score", "id"], ascending=[False, True], kind="mergesort")
    return out.assign(rank=np.arange(1, len(out) + 1)).reset_index(drop=True)
