"""The discovery loop's steps, as plain functions over files (Prefect tasks wrap them one to one).

A campaign directory holds, per round ``k``:

* ``round_k/generated.csv.gz``: every sample with scores and validity flags,
* ``round_k/accepted.csv.gz``: those passing the filters (valid, unique against all earlier
  rounds, novel against the training set), and ``round_k/counts.json``;

and at the end ``ranked.csv`` (all accepted candidates, best first) plus the top candidates' files
in ``top/`` (``<id>.cif`` for crystals; ``<id>.sdf``, ``molecules.smi`` and a ``top.png`` grid for
molecules).
Each file is written atomically, so a round whose files exist is finished and a rerun of the same
campaign resumes after it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from design.api import Generator
from design.config import RunConfig
from design.data import training_structures
from design.domains.base import Domain
from design.generation.filtering import FilterCounts, ReferenceIndex, annotate, select
from design.generation.ranking import rank_table
from design.generation.tables import TEXT_COLUMN, from_table, read_table, to_table, write_table
from design.utils import atomic_write_text

log = logging.getLogger(__name__)


def round_dir(out_dir: Path, k: int) -> Path:
    return Path(out_dir) / f"round_{k:02d}"


def round_seed(config: RunConfig, k: int) -> int:
    return config.seed * 1000 + k


def generate_round(generator: Generator, config: RunConfig, k: int, out_dir: Path, feedback: list | None = None) -> Path:
    """Sample, decode and check ``generate.n_per_round`` candidates; write ``generated.csv.gz``.

    With ``feedback`` objects (e.g. earlier rounds' verified hits or best candidates) and
    ``generate.feedback_spread``, latent samples come from Gaussians around their encodings; else with
    a target and ``generate.prior_focus``, from the focused prior, whose Gaussian also covers the
    feedback's encodings."""
    path = round_dir(out_dir, k) / "generated.csv.gz"
    t0 = time.time()
    target = config.generate.target
    prior = generator.prior_for(target, config.generate.prior_focus, feedback, config.generate.feedback_spread)
    batch = generator.sample(config.generate.n_per_round, seed=round_seed(config, k), target=target, prior=prior)
    cands = generator.candidates(batch, id_prefix=f"r{k:02d}-")
    write_table(to_table(cands, generator.domain, round_index=k), path)
    log.info("round %d: generated %d candidates in %.1fs", k, len(cands), time.time() - t0)
    return path


def reference_index(domain: Domain, config: RunConfig) -> ReferenceIndex:
    """The training structures, bucketed for novelty tests."""
    return ReferenceIndex.build(domain, training_structures(domain, config))


def seen_index(domain: Domain, out_dir: Path, before_round: int) -> ReferenceIndex:
    """Candidates accepted in rounds before ``before_round``."""
    seen = ReferenceIndex(domain)
    for k in range(before_round):
        path = round_dir(out_dir, k) / "accepted.csv.gz"
        if path.is_file():
            for c in from_table(read_table(path), domain):
                seen.add(c.obj)
    return seen


def filter_round(domain: Domain, config: RunConfig, k: int, out_dir: Path, reference: ReferenceIndex) -> dict:
    """Annotate uniqueness/novelty, keep what passes the filters; write ``accepted.csv.gz`` and ``counts.json``."""
    rdir = round_dir(out_dir, k)
    table = read_table(rdir / "generated.csv.gz")
    # validity was decided when generated: reuse those flags rather than recheck, and rebuild
    # objects only for rows the filter may keep (an invalid one may not survive its file format)
    valid_rows = table[table["valid"].astype(bool)] if config.filter.require_valid else table
    cands = from_table(valid_rows, domain, skip_unreadable=not config.filter.require_valid)
    checks = {row.id: row for row in valid_rows.itertuples(index=False)}
    for c in cands:
        c.check = _StoredCheck(checks[c.id])
    t0 = time.time()
    counts = annotate(cands, domain, reference, seen_index(domain, out_dir, k))
    counts.generated = len(table)
    counts.valid_structural = int(table["structural_valid"].astype(bool).sum())
    counts.valid_compositional = int(table["compositional_valid"].astype(bool).sum())
    kept = select(cands, config.filter.require_valid, config.filter.require_unique, config.filter.require_novel)
    parts = config.filter.require_contains
    if parts:
        with_parts = {c.id for c in cands if all(domain.contains(c.obj, p) for p in parts)}
        kept = [c for c in kept if c.id in with_parts]
    kept_ids = {c.id for c in kept}
    flags = {c.id: (c.scores["unique"], c.scores["novel"]) for c in cands}
    table["unique"] = [bool(flags.get(i, (0.0, 0.0))[0]) for i in table["id"]]
    table["novel"] = [bool(flags.get(i, (0.0, 0.0))[1]) for i in table["id"]]
    write_table(table[table["id"].isin(kept_ids)], rdir / "accepted.csv.gz")
    metrics = _round_metrics(counts, table, len(kept))
    if parts:  # read-back candidates (the valid ones, when validity is required) with every required part
        metrics["with_required_parts"] = len(with_parts)
    atomic_write_text(rdir / "counts.json", json.dumps(metrics, indent=2))
    log.info("round %d: %s (filter %.1fs)", k, {k2: metrics[k2] for k2 in ("generated", "valid", "unique", "novel")},
             time.time() - t0)
    return metrics


class _StoredCheck:
    """Validity flags read back from a generated table."""

    def __init__(self, row):
        self.structural = bool(row.structural_valid)
        self.compositional = bool(row.compositional_valid)
        text = row.reasons if isinstance(row.reasons, str) else ""  # empty cells read back as NaN
        self.reasons = tuple(r for r in text.split("; ") if r)

    @property
    def valid(self) -> bool:
        return self.structural and self.compositional


def _round_metrics(counts: FilterCounts, table: pd.DataFrame, accepted: int) -> dict:
    m = {**asdict(counts), **counts.rates(), "accepted": accepted}
    valid = table[table["valid"]]
    m["mean_realism"] = float(table["realism"].mean())
    m["mean_penalty"] = float(table["penalty"].mean())
    m["mean_realism_valid"] = float(valid["realism"].mean()) if len(valid) else float("nan")
    return m


def accepted_table(out_dir: Path, rounds: int) -> pd.DataFrame:
    """Every round's accepted candidates in one table (empty if none)."""
    tables = [read_table(p) for k in range(rounds) if (p := round_dir(out_dir, k) / "accepted.csv.gz").is_file()]
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True).astype({"id": str}) if tables else pd.DataFrame()


def rank_campaign(domain: Domain, config: RunConfig, rounds: int, out_dir: Path) -> pd.DataFrame:
    """Rank every accepted candidate of the campaign; write ``ranked.csv`` and ``top/<id>.cif``."""
    accepted = accepted_table(out_dir, rounds)
    ranked = rank_table(accepted, config.rank, config.generate.target) if len(accepted) else accepted
    return write_ranking(domain, config, ranked, out_dir)


def write_ranking(domain: Domain, config: RunConfig, ranked: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Write a ranked table (best first, with its structure text) as ``ranked.csv`` without the text,
    and the top ``rank.top_k`` structure files in ``top/``; return the table without the text."""
    out_dir = Path(out_dir)
    if ranked.empty:
        ranked = pd.DataFrame(columns=["rank", "id", "score"])
        write_table(ranked, out_dir / "ranked.csv")
        return ranked
    top = ranked.head(config.rank.top_k)
    top_dir = out_dir / "top"
    if top_dir.is_dir():  # a rerun must not leave files of an earlier ranking behind
        for stale in top_dir.iterdir():
            stale.unlink()
    top_cands = from_table(top, domain)
    domain.write(top_cands, top_dir)
    domain.picture(top_cands, top_dir / "top.png")  # a grid drawing, for domains that draw one
    ranked = ranked.drop(columns=[TEXT_COLUMN])
    cols = ["rank", "id", "score"] + [c for c in ranked.columns if c not in ("rank", "id", "score")]
    ranked = ranked[cols]
    write_table(ranked, out_dir / "ranked.csv")
    return ranked
