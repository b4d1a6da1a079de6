"""Goal-directed molecule campaigns (a molecule config with an ``activity`` section), as plain
functions over campaign files.

Per round ``k``, after the generic generate and filter steps (:mod:`design.generation.loop`):

* :func:`score_round`: the activity ensembles of ``activity.targets`` predict ``act_<target>`` (mean
  probability) and ``act_<target>_std`` (member spread) for the round's accepted candidates;
  ``sim_<target>`` / ``sim_min`` measure how close each is to a labelled active (the applicability
  domain: with ``activity.domain_similarity`` those below it rank after all others); ``known``
  marks a candidate that is a labelled molecule of an activity dataset (a rediscovery, never ranked),
  ``success`` one predicted active on every target (p >= ``active_threshold``) with QED >=
  ``qed_min`` and SA <= ``sa_max`` -> ``round_k/scored.csv.gz`` and the round's metrics
  ``round_k/goal.json``;
* :func:`feedback`: the latent prior of round ``k`` covers the encodings of the best-ranked novel
  candidates of the rounds before (``activity.feedback_top``; ranked by the ``rank`` section, the
  activities on their pessimistic value mean - u * std), or for round 0 the labelled actives the
  models rate best on every target (``activity.seed_actives``).

At the end :func:`final_report` ranks every scored candidate, describes the best
``activity.final_top`` (success rate, activity rates, novelty, internal diversity, and the same rates
under an independent judge, a Morgan-fingerprint random forest on the same training split) and the
same for ``activity.baseline`` valid samples of the unsteered generator -> ``goal.json``.

Activity models are the GNN ensembles of :mod:`property_models.activity`, trained on the scaffold
train split (``invdes activity``), so their held-out metrics are known; a missing one is trained here.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from design.config import RunConfig
from design.generation.loop import round_dir
from design.generation.ranking import rank_table
from design.generation.tables import TEXT_COLUMN, read_table, write_table
from design.utils import atomic_write_text, strict_json

log = logging.getLogger(__name__)

SCORED = "scored.csv.gz"


# ------------------------------------------------------------------------------------- models
def model_paths(cfg: RunConfig) -> dict[str, Path]:
    a = cfg.activity
    return {t: Path(a.models.get(t, f"runs/activity/{t}.pt")) for t in a.targets}


def ensure_models(cfg: RunConfig) -> dict[str, str]:
    """Every target's ensemble path; one missing is trained on the scaffold train split (its held-out
    metrics written beside it as ``<name>.json``)."""
    from property_models.activity import evaluate, format_table

    out = {}
    for target, path in model_paths(cfg).items():
        if not path.is_file():
            if target in cfg.activity.models:
                raise FileNotFoundError(f"activity.models.{target}={str(path)!r} does not exist; train it with "
                                        f"`invdes activity --target {target} --out {path}` or remove the entry")
            log.info("no %s activity model at %s: training one (%d members x %d epochs)", target, path,
                     cfg.activity.members, cfg.activity.epochs)
            result = evaluate(target, members=cfg.activity.members, epochs=cfg.activity.epochs, seed=cfg.seed, out=path,
                              path=cfg.activity.datasets.get(target))
            atomic_write_text(path.with_suffix(".json"), strict_json(result, indent=2))
            log.info("%s", format_table(result))
        out[target] = str(path)
    return out


@lru_cache(maxsize=8)
def _load(path: str, mtime: float):
    from property_models.activity import ActivityModel

    return ActivityModel.load(path)


def predict(models: dict[str, str], smiles: list[str]) -> pd.DataFrame:
    """``act_<target>`` and ``act_<target>_std`` per SMILES (NaN where RDKit cannot parse it), and
    ``act_min`` / ``act_min_std``: the least active target's values (the objective of a multi-target
    goal; the target's own columns for one target)."""
    cols = {}
    for target, path in models.items():
        mean, std = _load(path, Path(path).stat().st_mtime).predict(list(smiles))
        cols[f"act_{target}"], cols[f"act_{target}_std"] = mean, std
    means = np.stack([cols[f"act_{t}"] for t in models], axis=1)
    stds = np.stack([cols[f"act_{t}_std"] for t in models], axis=1)
    worst = np.argmin(np.where(np.isnan(means), np.inf, means), axis=1)
    rows = np.arange(len(means))
    cols["act_min"], cols["act_min_std"] = means[rows, worst], stds[rows, worst]
    return pd.DataFrame(cols)


def success(cfg: RunConfig, table: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
    """[N] bool: active on every target (``columns``, default the ensembles' ``act_<target>``) with the
    QED and SA bounds; NaN counts as failing."""
    a = cfg.activity
    ok = np.ones(len(table), dtype=bool)
    for col in columns or a.columns:
        ok &= table[col].to_numpy(dtype=float) >= a.active_threshold
    ok &= table["qed"].to_numpy(dtype=float) >= a.qed_min
    ok &= table["sa"].to_numpy(dtype=float) <= a.sa_max
    return ok


# ------------------------------------------------------------------------------- known molecules
def datasets(cfg: RunConfig) -> tuple[tuple[str, str | None], ...]:
    """(target, labelled dataset or None for the shipped one) pairs, hashable for caching."""
    return tuple((t, cfg.activity.datasets.get(t)) for t in cfg.activity.targets)


@lru_cache(maxsize=4)
def labelled_molecules(sets: tuple[tuple[str, str | None], ...]) -> pd.DataFrame:
    """Canonical SMILES of the labelled molecules of :func:`datasets`, one row each, with a 0/1 column
    per target (NaN where a target's set lacks the molecule)."""
    from rdkit import Chem

    from property_models.activity import read_activity

    frames = []
    for t, path in sets:
        data = read_activity(t, path)
        frames.append(pd.DataFrame({"smiles": [Chem.MolToSmiles(m) for m in data.mols], t: data.y})
                      .groupby("smiles", as_index=False)[t].max())
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f, on="smiles", how="outer")
    return out


@lru_cache(maxsize=4)
def active_bits(sets: tuple[tuple[str, str | None], ...]) -> dict[str, np.ndarray]:
    """Per target, Morgan bits of its labelled actives (:func:`labelled_molecules`)."""
    known = labelled_molecules(sets)
    return {t: _bits(known.loc[known[t] == 1, "smiles"]) for t, _ in sets}


def similarity_to_actives(cfg: RunConfig, smiles: list[str]) -> pd.DataFrame:
    """``sim_<target>``: Tanimoto similarity of each SMILES to the nearest labelled active of the target,
    and ``sim_min`` the smallest over targets (NaN where RDKit cannot parse the SMILES): how close a
    candidate is to chemistry the activity models were trained on."""
    from design.domains.molecule.chemistry import mol_from_smiles
    from design.metrics.molecule import morgan_bits, nearest_similarity

    mols = [mol_from_smiles(s) for s in smiles]
    ok = [i for i, m in enumerate(mols) if m is not None]
    fps = morgan_bits([mols[i] for i in ok])
    cols = {}
    for t, ref in active_bits(datasets(cfg)).items():
        values = np.full(len(smiles), np.nan)
        if ok and len(ref):
            values[ok] = nearest_similarity(fps, ref)
        cols[f"sim_{t}"] = values
    table = pd.DataFrame(cols)
    table["sim_min"] = table.min(axis=1, skipna=False)
    return table


def seed_actives(cfg: RunConfig, models: dict[str, str], out_dir: Path) -> pd.DataFrame:
    """The labelled actives (of any target) the models rate best on every target (min over targets of
    the predicted probability), ``activity.seed_actives`` of them; cached as ``seed_actives.csv``."""
    path = Path(out_dir) / "seed_actives.csv"
    if path.is_file():
        return read_table(path)
    known = labelled_molecules(datasets(cfg))
    actives = known[(known[list(cfg.activity.targets)] == 1).any(axis=1)].reset_index(drop=True)
    pred = predict(models, actives["smiles"].tolist())
    actives = pd.concat([actives, pred], axis=1)
    top = actives.sort_values(["act_min", "smiles"], ascending=[False, True]).head(cfg.activity.seed_actives)
    write_table(top, path)
    return top


# ------------------------------------------------------------------------------------- rounds
def score_table(cfg: RunConfig, table: pd.DataFrame, models: dict[str, str]) -> pd.DataFrame:
    """``table`` plus the activity and similarity columns, ``known`` and ``success``."""
    table = table.reset_index(drop=True)
    smiles = table["smiles"].tolist()
    scored = pd.concat([table, predict(models, smiles), similarity_to_actives(cfg, smiles)], axis=1)
    known = set(labelled_molecules(datasets(cfg))["smiles"])
    scored["known"] = scored["smiles"].isin(known)
    scored["success"] = success(cfg, scored)
    return scored


def score_round(cfg: RunConfig, k: int, out_dir: Path, models: dict[str, str]) -> dict:
    """Score round ``k``'s accepted candidates; write ``scored.csv.gz`` and ``goal.json``; return the metrics."""
    rdir = round_dir(out_dir, k)
    accepted = read_table(rdir / "accepted.csv.gz")
    scored = score_table(cfg, accepted, models)
    write_table(scored, rdir / SCORED)
    metrics = rate_metrics(cfg, scored[~scored["known"]])
    metrics["known"] = int(scored["known"].sum())
    ranked = ranked_so_far(cfg, out_dir, k)
    best = ranked.head(cfg.activity.feedback_top)
    metrics["success_rate_top"] = float(best["success"].mean()) if len(best) else float("nan")
    atomic_write_text(rdir / "goal.json", strict_json(metrics, indent=2))
    log.info("round %d: %d scored, success rate %.3f (all novel), %.3f (best %d so far)", k, len(scored),
             metrics["success_rate"], metrics["success_rate_top"], len(best))
    return metrics


def finished_round(out_dir: Path, k: int) -> dict | None:
    path = round_dir(out_dir, k) / "goal.json"
    if path.is_file() and (round_dir(out_dir, k) / SCORED).is_file():
        return {f"goal_{key}": v for key, v in json.loads(path.read_text()).items()}
    return None


def scored_so_far(out_dir: Path, through: int) -> pd.DataFrame:
    tables = [read_table(p) for k in range(through + 1) if (p := round_dir(out_dir, k) / SCORED).is_file()]
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True).astype({"id": str}) if tables else pd.DataFrame()


def ranked_so_far(cfg: RunConfig, out_dir: Path, through: int) -> pd.DataFrame:
    """Every scored candidate of rounds ``0..through`` that is not a labelled molecule, ranked."""
    return rank_novel(cfg, scored_so_far(out_dir, through))


def rank_novel(cfg: RunConfig, scored: pd.DataFrame) -> pd.DataFrame:
    """The candidates of a scored table that are not labelled molecules, ranked by ``cfg.rank``; with
    ``activity.domain_similarity``, those within the applicability domain (``in_domain``: ``sim_min`` at
    least that) first."""
    if scored.empty:
        return scored
    ranked = rank_table(scored[~scored["known"].astype(bool)].reset_index(drop=True), cfg.rank, cfg.generate.target)
    tau = cfg.activity.domain_similarity
    if not tau:
        return ranked
    if "sim_min" not in ranked:
        raise ValueError("activity.domain_similarity needs the sim_min column; these rounds were scored before it "
                         "existed: rescore them (delete round_*/scored.csv.gz) or set activity.domain_similarity=0")
    ranked = ranked.assign(in_domain=ranked["sim_min"].to_numpy(dtype=float) >= tau)
    ranked = ranked.sort_values("in_domain", ascending=False, kind="mergesort")
    return ranked.assign(rank=np.arange(1, len(ranked) + 1)).reset_index(drop=True)


def feedback(cfg: RunConfig, out_dir: Path, k: int, models: dict[str, str], encodable) -> list[str]:
    """SMILES whose encodings join round ``k``'s latent prior: the best-ranked novel candidates of the
    earlier rounds, or for round 0 the seed actives; only those ``encodable(smiles)`` accepts (the
    generator's vocabulary and length)."""
    if k == 0:
        smiles = seed_actives(cfg, models, out_dir)["smiles"].tolist() if cfg.activity.seed_actives else []
    else:
        ranked = ranked_so_far(cfg, out_dir, k - 1)
        smiles = ranked.head(cfg.activity.feedback_top)["smiles"].tolist() if len(ranked) else []
    kept = [s for s in smiles if encodable(s)]
    if len(kept) < len(smiles):
        log.info("round %d feedback: %d of %d molecules do not encode with the generator's vocabulary; left out",
                 k, len(smiles) - len(kept), len(smiles))
    return kept


def encodable_by(checkpoint: str | Path):
    """A test ``smiles -> bool``: whether the generator in ``checkpoint`` can encode the molecule (its
    vocabulary and length), so that it can be fine-tuned on it and sample around it."""
    from design.api import Generator

    domain = Generator.from_checkpoint(checkpoint).domain

    def encodable(smiles: str) -> bool:
        try:
            domain.encode([smiles])
        except Exception:  # unknown tokens, too long, unparsable: all mean the generator cannot use it
            return False
        return True

    return encodable


def latest_generator(out_dir: Path, k: int, checkpoint: str | Path) -> Path:
    """The generator round ``k`` starts from: the one round ``k - 1`` fine-tuned, else ``checkpoint``."""
    previous = round_dir(out_dir, k - 1) / "generator.pt" if k > 0 else None
    return previous if previous is not None and previous.is_file() else Path(checkpoint)


def steer(cfg: RunConfig, out_dir: Path, k: int, models: dict[str, str], checkpoint: str | Path, encodable) -> tuple[list[str], str]:
    """Round ``k``'s feedback SMILES (:func:`feedback`) and the generator to sample it from: with
    ``activity.finetune_epochs``, the previous round's generator (round 0: ``checkpoint``) fine-tuned
    on the feedback -> ``round_k/generator.pt`` (reused when it exists)."""
    from design.training.finetune import finetune_checkpoint

    smiles = feedback(cfg, out_dir, k, models, encodable)
    a = cfg.activity
    start = latest_generator(out_dir, k, checkpoint)
    if not (a.finetune_epochs and smiles):  # nothing to learn from: the latest generator as it is
        return smiles, str(start)
    path = round_dir(out_dir, k) / "generator.pt"
    if not path.is_file():
        finetune_checkpoint(start, smiles, path, epochs=a.finetune_epochs, lr=a.finetune_lr, seed=cfg.seed * 1000 + k)
    return smiles, str(path)


# ------------------------------------------------------------------------------------- report
def rate_metrics(cfg: RunConfig, table: pd.DataFrame, judged: pd.DataFrame | None = None,
                 actives: np.ndarray | None = None) -> dict:
    """Success and component rates of a scored table (and under the judge's columns when given);
    with ``actives`` (Morgan bits of the labelled actives), ``snn_actives``: the mean Tanimoto
    similarity of each molecule to its nearest labelled active (analogues of known actives score
    near 1, molecules outside the models' experience low)."""
    from design.metrics.molecule import internal_diversity, snn

    a = cfg.activity
    n = len(table)
    m: dict = {"n": n}
    if n == 0:
        return m
    m["success_rate"] = float(success(cfg, table).mean())
    active = np.ones(n, dtype=bool)
    for t, col in zip(a.targets, a.columns, strict=True):
        hit = table[col].to_numpy(dtype=float) >= a.active_threshold
        m[f"active_rate_{t}"], m[f"mean_{col}"] = float(hit.mean()), float(np.nanmean(table[col]))
        active &= hit
    m["active_rate"] = float(active.mean())
    m["qed_ok_rate"] = float((table["qed"] >= a.qed_min).mean())
    m["sa_ok_rate"] = float((table["sa"] <= a.sa_max).mean())
    m["mean_qed"], m["mean_sa"] = float(table["qed"].mean()), float(table["sa"].mean())
    m["uniqueness"] = float(table["smiles"].nunique() / n)
    if "novel" in table:  # against the generator's training molecules
        m["novelty"] = float(table["novel"].astype(bool).mean())
    fps = _bits(table["smiles"])
    m["internal_diversity"] = internal_diversity(fps)
    if "sim_min" in table:  # the applicability domain: similarity to the nearest labelled active
        m["mean_sim_min"] = float(np.nanmean(table["sim_min"]))
        if a.domain_similarity:
            m["in_domain_rate"] = float((table["sim_min"].to_numpy(dtype=float) >= a.domain_similarity).mean())
    if actives is not None and len(actives):
        m["snn_actives"] = snn(fps, actives)
    if judged is not None:
        cols = [f"judge_{t}" for t in a.targets]
        m["judge_success_rate"] = float(success(cfg, judged, cols).mean())
        m["judge_active_rate"] = float((judged[cols].to_numpy(dtype=float) >= a.active_threshold).all(1).mean())
        for t, col in zip(a.targets, cols, strict=True):  # threshold-free: the judge's mean probability
            m[f"judge_mean_{t}"] = float(np.nanmean(judged[col]))
    return m


def _bits(smiles) -> np.ndarray:
    from design.domains.molecule.chemistry import mol_from_smiles
    from design.metrics.molecule import morgan_bits

    return morgan_bits([m for s in smiles if (m := mol_from_smiles(s)) is not None])


def judge_forests(cfg: RunConfig) -> dict:
    """Per target, a Morgan-fingerprint random forest fitted on the same scaffold train split as the
    ensembles (``activity.judge_trees`` trees), with its held-out ROC-AUC."""
    from property_models.activity import (
        metrics,
        morgan_fingerprints,
        random_forest,
        read_activity,
        scaffold_split,
    )

    out = {}
    for t, path in datasets(cfg):
        data = read_activity(t, path)
        split = scaffold_split(data.mols)
        fps = morgan_fingerprints(data.mols)
        forest = random_forest("classification", cfg.activity.judge_trees, cfg.seed).fit(fps[split.train], data.y[split.train])
        p = forest.predict_proba(fps[split.test])[:, 1]
        y = data.y[split.test]
        held_out = metrics("classification", y, p)
        # calibration context for the candidates' judged numbers: how the judge rates held-out molecules
        held_out.update(active_recall=float((p[y == 1] >= cfg.activity.active_threshold).mean()),
                        mean_p_actives=float(p[y == 1].mean()), mean_p_inactives=float(p[y == 0].mean()))
        out[t] = (forest, held_out)
    return out


def judge(forests: dict, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``judge_<target>`` (the forest's probability) columns."""
    from design.domains.molecule.chemistry import mol_from_smiles
    from property_models.activity import morgan_fingerprints

    mols = [mol_from_smiles(s) for s in table["smiles"]]
    ok = [i for i, m in enumerate(mols) if m is not None]
    out = table.copy()
    for t, (forest, _) in forests.items():
        values = np.full(len(table), np.nan)
        if ok:
            values[ok] = forest.predict_proba(morgan_fingerprints([mols[i] for i in ok]))[:, 1]
        out[f"judge_{t}"] = values
    return out


def baseline_table(cfg: RunConfig, checkpoint: str | Path, models: dict[str, str]) -> pd.DataFrame:
    """``activity.baseline`` valid samples of the generator with its own fitted prior and no target,
    scored like the candidates (labelled molecules left out)."""
    from design.api import Generator
    from design.data import training_structures
    from design.generation.tables import to_table

    generator = Generator.from_checkpoint(checkpoint)
    cands = generator.generate(cfg.activity.baseline, seed=cfg.seed + 7919, valid_only=True)
    table = to_table(cands, generator.domain)
    table["novel"] = ~table["smiles"].isin(set(training_structures(generator.domain, cfg)))
    scored = score_table(cfg, table, models)
    return scored[~scored["known"]].reset_index(drop=True)


def final_report(cfg: RunConfig, out_dir: Path, models: dict[str, str], checkpoint: str | Path) -> tuple[pd.DataFrame, dict]:
    """The final ranking (every scored novel candidate, best first) and the report of its top
    ``activity.final_top`` against the unsteered baseline; writes ``goal.json``, ``goal_top.csv``
    and ``goal_baseline.csv``."""
    out_dir = Path(out_dir)
    scored = scored_so_far(out_dir, cfg.generate.rounds - 1)
    ranked = rank_novel(cfg, scored)
    if ranked.empty:
        return ranked, {"ranked": 0}
    forests = judge_forests(cfg)
    top = judge(forests, ranked.head(cfg.activity.final_top))
    base = judge(forests, baseline_table(cfg, checkpoint, models))
    keep = [c for c in top.columns if c != TEXT_COLUMN]
    write_table(top[keep], out_dir / "goal_top.csv")
    write_table(base[[c for c in base.columns if c != TEXT_COLUMN]], out_dir / "goal_baseline.csv")
    actives = np.concatenate(list(active_bits(datasets(cfg)).values()))
    result = {
        "targets": list(cfg.activity.targets),
        "criteria": {"active_threshold": cfg.activity.active_threshold, "qed_min": cfg.activity.qed_min,
                     "sa_max": cfg.activity.sa_max},
        "ranked": len(ranked),
        "known_left_out": int(scored["known"].astype(bool).sum()),
        "top": rate_metrics(cfg, top, top, actives),
        "baseline": rate_metrics(cfg, base, base, actives),
        "judge_held_out": {t: held for t, (_, held) in forests.items()},
        "models": models,
    }
    top_rate, base_rate = result["top"]["success_rate"], result["baseline"].get("success_rate", float("nan"))
    result["success_enrichment"] = top_rate / base_rate if base_rate > 0 else None
    for t in cfg.activity.targets:  # does the independent judge also see the top above the baseline?
        base_mean = result["baseline"].get(f"judge_mean_{t}", float("nan"))
        result[f"judge_mean_ratio_{t}"] = result["top"][f"judge_mean_{t}"] / base_mean if base_mean > 0 else None
    atomic_write_text(out_dir / "goal.json", strict_json(result, indent=2))
    log.info("goal report: top %d success rate %.3f (judge %.3f), internal diversity %.3f; baseline %.3f",
             result["top"]["n"], top_rate, result["top"].get("judge_success_rate", float("nan")),
             result["top"].get("internal_diversity", float("nan")), base_rate)
    return ranked, result

