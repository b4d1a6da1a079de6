"""Rank candidates by a weighted sum of z-scored terms, and mark their Pareto front.

``score = w_realism * z(realism) - w_penalty * z(penalty) + sum_p w_p * goal_p(z(value_p))``,
where ``goal`` is +z for ``maximize``, -z for ``minimize``, and -|value - target| / std for
``target``. z-scores are taken over the candidate set being ranked, so the weights say how much
one standard deviation of each term is worth. A term with zero spread contributes nothing.

A property key names the column ``pred_<key>`` (the discriminator's heads) or, when the table has
it, the column ``<key>`` itself (e.g. a surrogate's ``sur_e_3d``). A column with an uncertainty
``<column>_std`` is ranked on its pessimistic value: ``mean + u * std`` when minimised,
``mean - u * std`` when maximised (``u`` = ``rank.uncertainty_weight``), so a confident
prediction beats an equally good but uncertain one.
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


def property_column(table: pd.DataFrame, prop: str) -> str:
    """The table column a rank key names: ``prop`` itself if present, else ``pred_<prop>``."""
    col = prop if prop in table else f"pred_{prop}"
    if col not in table:
        raise ValueError(f"rank key {prop!r} has no column {prop!r} or {col!r} in the candidate table")
    return col


def pessimistic(table: pd.DataFrame, col: str, goal: str, weight: float) -> pd.Series:
    """``col`` made worse by ``weight`` times its ``<col>_std`` (when the table has one)."""
    std = f"{col}_std"
    if std not in table or weight == 0:
        return table[col]
    sign = 1.0 if goal == "minimize" else -1.0
    return table[col] + sign * weight * table[std]


def pareto_front(table: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """[N] bool: rows no other row dominates (at least as good in every objective, better in one).

    ``objectives`` maps a column to ``"minimize"`` or ``"maximize"``; NaN counts as worst."""
    if table.empty:
        return np.zeros(0, dtype=bool)
    cols = []
    for col, goal in objectives.items():
        v = table[col].to_numpy(dtype=float)
        v = v if goal == "minimize" else -v
        cols.append(np.where(np.isnan(v), np.inf, v))
    x = np.stack(cols, axis=1)  # [N, K], lower is better
    # a row's dominators come before it in lexicographic order, and a dominated dominator's own
    # dominator on the front dominates the row too: so, in that order, a row is on the front unless
    # a row already on it dominates it (time N x front size, not the N x N comparison's memory)
    front = np.zeros(len(x), dtype=bool)
    kept = np.empty_like(x)
    n_kept = 0
    for i in np.lexsort(x.T[::-1]):
        f = kept[:n_kept]
        if not ((f <= x[i]).all(1) & (f < x[i]).any(1)).any():
            front[i] = True
            kept[n_kept] = x[i]
            n_kept += 1
    return front


def rank_table(table: pd.DataFrame, cfg: RankConfig, target: dict[str, float] | None = None) -> pd.DataFrame:
    """Return ``table`` sorted best-first with ``score``, ``rank`` (1 = best) and ``pareto`` (on the
    front of realism, penalty and the weighted properties' pessimistic values) columns added."""
    if table.empty:
        return table.assign(score=pd.Series(dtype=float), rank=pd.Series(dtype=int), pareto=pd.Series(dtype=bool))
    score = cfg.realism_weight * _z(table["realism"]) - cfg.penalty_weight * _z(table["penalty"])
    objectives = pd.DataFrame({"realism": table["realism"], "penalty": table["penalty"]}, index=table.index)
    goals = {"realism": "maximize", "penalty": "minimize"}
    for prop, weight in cfg.property_weights.items():
        col = property_column(table, prop)
        goal = cfg.property_goals.get(prop, "maximize")
        if goal in ("maximize", "minimize"):
            value = pessimistic(table, col, goal, cfg.uncertainty_weight)
            objectives[prop], goals[prop] = value, goal
            term = _z(value) if goal == "maximize" else -_z(value)
        else:
            value = (target or {}).get(prop)
            if value is None:
                raise ValueError(f"rank goal 'target' for {prop!r} needs generate.target.{prop}")
            dev = (table[col] - value).abs()
            sd = float(table[col].std(ddof=0)) or 1.0
            term = -dev / sd
            objectives[prop], goals[prop] = dev, "minimize"
        score = score + weight * term
    front = pareto_front(objectives, goals)
    out = table.assign(score=score.round(6), pareto=front).sort_values(["score", "id"], ascending=[False, True], kind="mergesort")
    if cfg.max_per_group is not None:
        out = cap_groups(out, cfg.group_by, cfg.max_per_group)
    return out.assign(rank=np.arange(1, len(out) + 1)).reset_index(drop=True)


def cap_groups(ranked: pd.DataFrame, column: str, cap: int) -> pd.DataFrame:
    """``ranked`` (best first) with every row beyond the first ``cap`` of its ``column`` group moved
    after all others, order otherwise kept; adds ``group_overflow`` (True for the moved rows).

    A diversity filter: a top list of twenty polymorphs of one formula tells a user less than one of
    twenty formulas, and a loop that verifies its top list learns less from it."""
    if column not in ranked.columns:
        raise ValueError(f"rank.group_by column {column!r} is not in the candidate table (columns: "
                         f"{', '.join(map(str, ranked.columns))}); set rank.group_by to one of them")
    over = ranked.groupby(column, sort=False, dropna=False).cumcount().to_numpy() >= cap
    ranked = ranked.assign(group_overflow=over)
    return pd.concat([ranked[~over], ranked[over]])
