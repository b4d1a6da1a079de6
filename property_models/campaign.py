"""The closed loop's property-model steps, as plain functions over campaign files.

A campaign whose config has ``surrogate`` and ``verify`` sections runs, per round ``k``, after the
generic generate and filter steps (:mod:`design.generation.loop`):

* :func:`score_round`: the current surrogate predicts ``sur_<target>`` and its ensemble spread
  ``sur_<target>_std`` for the round's accepted candidates -> ``round_k/scored.csv.gz``;
* :func:`verify_round`: the round's best ``verify.top_k`` (ranked by the ``rank`` section, with the
  uncertainty penalty) get the BVSE oracle's barriers and CHGNet energies ->
  ``round_k/verified.csv.gz``, plus the round's verification metrics in ``round_k/verify.json``;
* :func:`learn_round`: the surrogate is fine-tuned on a replay sample of its labels plus every
  result verified so far -> ``round_k/surrogate.pt`` (the next round scores with it).

At the end :func:`final_ranking` rescores every accepted candidate with the last surrogate and ranks
them (``ranked.csv``, verified columns joined where known), and :func:`enrichment` verifies the top
``verify.final_top`` and ``verify.baseline`` random accepted ones and compares their hit rates.

A *hit* is a verified value below the ``verify.hit_quantile`` quantile of the oracle values of the
generator's Li-containing training structures (:func:`hit_threshold`). Barriers above the oracle's
``encut`` (no percolating path, stored as ``inf``) are censored at ``encut``: the worst values.
Every file is written atomically, so a round whose files exist is finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from design.config import RunConfig
from design.data.sources import cache_dir, resolve, sha256_of
from design.generation.loop import accepted_table, round_dir
from design.generation.ranking import rank_table
from design.generation.tables import TEXT_COLUMN, read_table, write_table
from design.utils import atomic_write_text, strict_json
from property_models.barriers import load_labelled, spearman
from property_models.bvse import BVSEOracle, BVSESettings
from property_models.labels import mentions_element, oracle_cap
from property_models.surrogate import (
    SurrogateConfig,
    SurrogateEnsemble,
    finetune_ensemble,
    graphs_for,
    train_ensemble,
)

log = logging.getLogger(__name__)

REPLAY = 400  # labelled structures replayed beside the verified ones when fine-tuning
VERIFIED_COLUMNS = ("id", "ver_e_1d", "ver_e_2d", "ver_e_3d", "oracle_ok", "oracle_failure", "chgnet_ok",
                    "chgnet_energy_per_atom", "chgnet_excess", "chgnet_excess_percentile")


# ---------------------------------------------------------------------------------- labels
def electrolyte_property_table(train_relpath: str, labels: str | Path, out: str | Path, target: str = "e_3d",
                               element: str = "Li") -> dict:
    """Write the generator's property table for ``train_relpath``: ``material_id`` and ``target``.

    A training crystal labelled by the oracle gets its value (censored at the cap); one without
    ``element`` gets the cap (no mobile ion, no migration path); one with it whose labelling failed
    gets no row (the data loader skips it). Returns counts."""
    df = pd.read_csv(resolve(train_relpath), usecols=["material_id", "cif"])
    has = mentions_element(df["cif"], element)
    lab = split_labels(labels, train_relpath, target)
    cap = oracle_cap(labels)
    values = dict(zip(lab["id"].astype(str), lab[target], strict=True))
    ids = df["material_id"].astype(str)
    rows = [(i, cap) for i, h in zip(ids, has, strict=True) if not h]
    rows += [(i, values[i]) for i, h in zip(ids, has, strict=True) if h and i in values]
    table = pd.DataFrame(rows, columns=["material_id", target])
    write_table(table, out)
    counts = {"rows": len(df), "without_element": int((~has).sum()), "labelled": len(values),
              "unlabelled_with_element": int(has.sum()) - len(values), "cap": cap}
    log.info("property table %s: %s", out, counts)
    return counts


def split_labels(labels: str | Path, relpath: str, target: str) -> pd.DataFrame:
    """The successfully labelled rows of one source split, ``target`` censored at the oracle's cap."""
    lab = pd.read_csv(labels)
    lab = lab[(lab["source"] == relpath) & lab["ok"].astype(bool)].copy()
    lab[target] = lab[target].astype(float).clip(upper=oracle_cap(labels))
    return lab


def hit_threshold(labels: str | Path, train_relpath: str, target: str, quantile: float) -> float:
    """The ``quantile`` of ``target`` over the oracle-labelled structures of the training split."""
    values = split_labels(labels, train_relpath, target)[target]
    if values.empty:
        raise ValueError(f"{labels} has no labelled structures of {train_relpath}; run `invdes label bvse`")
    return float(np.quantile(values, quantile))


# ---------------------------------------------------------------------------------- surrogate
def surrogate_config(cfg: RunConfig) -> SurrogateConfig:
    s = cfg.surrogate
    return SurrogateConfig(targets=[s.target], members=s.members, epochs=s.epochs, hidden=s.hidden, layers=s.layers,
                           cutoff=s.cutoff, descriptors=s.descriptors, log_target=s.log_target,
                           element_features=s.element_features, val_fraction=s.val_fraction, seed=cfg.seed,
                           device=cfg.train.device, adv_method=s.adv_method, adv_epsilon=s.adv_epsilon,
                           adv_steps=s.adv_steps, adv_weight=s.adv_weight, forest_weight=s.forest_weight)


def initial_surrogate(cfg: RunConfig, root: str | Path) -> Path:
    """The campaign's starting surrogate: ``surrogate.start`` when set (its target must match), else
    one trained on every labelled structure, cached under ``root`` by a hash of the labels file and
    the surrogate settings."""
    scfg = surrogate_config(cfg)
    if cfg.surrogate.start:
        ens = SurrogateEnsemble.load(cfg.surrogate.start)
        if ens.cfg.targets[:1] != scfg.targets:
            raise ValueError(f"surrogate.start {cfg.surrogate.start} predicts {ens.cfg.targets}, not "
                             f"{scfg.targets}; train one with `invdes surrogate --target {cfg.surrogate.target}`")
        return Path(cfg.surrogate.start)
    key = hashlib.sha256((sha256_of(Path(cfg.surrogate.labels)) + json.dumps(vars(scfg), sort_keys=True)).encode())
    path = Path(root) / key.hexdigest()[:12] / "surrogate.pt"
    if path.is_file():
        log.info("reusing surrogate %s", path)
        return path
    df = load_labelled(cfg.surrogate.labels, scfg.targets, oracle_cap(cfg.surrogate.labels))
    graphs = graphs_for(scfg, df["structure"].tolist())
    ens = train_ensemble(scfg, graphs, df[scfg.targets].to_numpy(dtype=np.float32))
    return ens.save(path)


def predict(ens: SurrogateEnsemble, structures: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread [N] of the ensemble's first target for pymatgen structures."""
    pred = ens.predict(graphs_for(ens.cfg, structures))
    return pred.mean[:, 0], pred.std[:, 0]


def _structures(table: pd.DataFrame) -> list:
    from pymatgen.core import Structure

    return [Structure.from_str(t, fmt="cif") for t in table[TEXT_COLUMN]]


# CHGNet stability of every scored candidate: the energy per atom above the training crystals'
# per-element reference (eV/atom) and its percentile among the training crystals' own excesses. Both
# are rankable; the electrolyte configs rank on the percentile, which measured better (two otherwise
# identical loops, top 50: 5 hits and median excess 0.99 eV/atom ranking on the percentile, 2 hits and
# 1.61 eV/atom on the raw excess, whose heavy tail of absurd structures squeezes the plausible ones
# together after standardisation).
STABILITY_COLUMNS = {"stab_excess": "chgnet_excess", "stab_excess_percentile": "chgnet_excess_percentile"}
UNSTABLE_FILL = {"stab_excess": 10.0, "stab_excess_percentile": 1.0}  # CHGNet failed: the least stable


def score_round(cfg: RunConfig, k: int, out_dir: Path, surrogate: str | Path) -> Path:
    """``round_k/scored.csv.gz``: the round's accepted candidates with the surrogate's columns and,
    with ``surrogate.stability``, the :data:`STABILITY_COLUMNS` (static CHGNet, :class:`Stability`)."""
    rdir = round_dir(out_dir, k)
    table = read_table(rdir / "accepted.csv.gz")
    col = cfg.surrogate.column
    if len(table):
        structures = _structures(table)
        mean, std = predict(SurrogateEnsemble.load(surrogate, cfg.train.device), structures)
        table[col], table[f"{col}_std"] = mean, std
        if cfg.surrogate.stability:
            judged = Stability(cfg, out_dir)(structures)
            for name, source in STABILITY_COLUMNS.items():
                table[name] = judged[source].fillna(UNSTABLE_FILL[name]).to_numpy()
    else:
        table[col], table[f"{col}_std"] = [], []
        if cfg.surrogate.stability:
            for name in STABILITY_COLUMNS:
                table[name] = []
    return write_table(table, rdir / "scored.csv.gz")


def scored_column(out_dir: Path, rounds: int, column: str) -> dict:
    """id -> ``column`` of every round's scored candidates (what scoring computed once)."""
    out: dict = {}
    for k in range(rounds):
        path = round_dir(out_dir, k) / "scored.csv.gz"
        if path.is_file():
            t = read_table(path)
            if column in t:
                out.update(zip(t["id"].astype(str), t[column], strict=True))
    return out


# ---------------------------------------------------------------------------------- stability
class Stability:
    """CHGNet energies judged against the training crystals: the excess of a structure's energy per
    atom over a per-element reference fitted to ``verify.reference_size`` training crystals, and its
    percentile among theirs (1 = less stable than every sampled training crystal). The reference is
    fitted once per campaign and kept in ``<campaign>/stability_reference.json``."""

    def __init__(self, cfg: RunConfig, out_dir: Path, relax_steps: int = 0):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.relax_steps = relax_steps
        self._chgnet = None
        self._reference = None

    def energies(self):
        if self._chgnet is None:
            from property_models.stability import CHGNetEnergies

            self._chgnet = CHGNetEnergies(relax_steps=self.relax_steps)
        return self._chgnet

    def reference(self):
        from property_models.stability import StabilityReference

        if self._reference is not None:
            return self._reference
        path = self.out_dir / "stability_reference.json"
        if path.is_file():
            blob = json.loads(path.read_text())
            self._reference = StabilityReference(blob["mu"], np.array(blob["excess_sorted"]))
            return self._reference
        from design.data import training_structures
        from design.domains import build_domain

        structures = training_structures(build_domain(self.cfg), self.cfg)
        rng = np.random.default_rng(self.cfg.seed)
        size = self.cfg.verify.reference_size if self.cfg.verify else 400
        pick = rng.choice(len(structures), size=min(size, len(structures)), replace=False)
        sample = [structures[i] for i in sorted(pick)]
        t0 = time.perf_counter()
        energies = [r.final_energy_per_atom if r.ok else math.nan for r in self.energies()(sample)]
        self._reference = StabilityReference.fit(sample, energies)
        atomic_write_text(path, json.dumps({"mu": self._reference.mu,
                                            "excess_sorted": self._reference.excess_sorted.tolist(),
                                            "n": len(sample), "seconds": time.perf_counter() - t0}))
        log.info("CHGNet stability reference from %d training crystals (%.0f s)", len(sample), time.perf_counter() - t0)
        return self._reference

    def __call__(self, structures: list) -> pd.DataFrame:
        """Columns ``chgnet_ok``, ``chgnet_energy_per_atom``, ``chgnet_excess``,
        ``chgnet_excess_percentile`` (NaN where CHGNet failed), one row per structure."""
        results = self.energies()(structures)
        e = np.array([r.final_energy_per_atom if r.ok else math.nan for r in results], dtype=float)
        ref = self.reference()
        excess = ref.excess(structures, e)
        return pd.DataFrame({"chgnet_ok": [r.ok for r in results], "chgnet_energy_per_atom": e,
                             "chgnet_excess": excess, "chgnet_excess_percentile": ref.percentile(excess)})


# ---------------------------------------------------------------------------------- verification
class Verifier:
    """BVSE barriers (cached on disk) and, optionally, the CHGNet stability judgement
    (:class:`Stability`, after ``verify.relax_steps`` of relaxation)."""

    def __init__(self, cfg: RunConfig, out_dir: Path):
        v = cfg.verify
        self.cfg = cfg
        self.oracle = BVSEOracle(cache_dir() / "bvse", BVSESettings(time_limit_s=v.time_limit_s, resolution=v.resolution), workers=v.workers)
        self.cap = self.oracle.settings.encut
        self.out_dir = Path(out_dir)
        self.stability = Stability(cfg, out_dir, v.relax_steps)

    def __call__(self, ids: list[str], structures: list, label: str = "verify") -> pd.DataFrame:
        """One row per structure with the columns :data:`VERIFIED_COLUMNS`."""
        res = self.oracle.evaluate(structures, label=f"BVSE {label}", every=max(len(structures), 1))
        out = pd.DataFrame({
            "id": ids,
            "ver_e_1d": [r.e_1d for r in res], "ver_e_2d": [r.e_2d for r in res], "ver_e_3d": [r.e_3d for r in res],
            "oracle_ok": [r.ok for r in res], "oracle_failure": [r.failure or "" for r in res],
        }).astype({"id": str, "ver_e_1d": float, "ver_e_2d": float, "ver_e_3d": float, "oracle_ok": bool})
        if self.cfg.verify.chgnet and structures:
            judged = self.stability(structures)
            for c in judged.columns:
                out[c] = judged[c].to_numpy()
        else:
            for c in VERIFIED_COLUMNS[6:]:
                out[c] = np.nan if c != "chgnet_ok" else False
        return out[list(VERIFIED_COLUMNS)]

    def censored(self, values: pd.Series) -> np.ndarray:
        """Oracle values with ``inf`` (no path below encut) censored at the cap; NaN for failures."""
        return values.astype(float).clip(upper=self.cap).to_numpy()


def valences_assignable(structure) -> bool:
    """Whether pymatgen's bond-valence analysis assigns oxidation states (what the oracle needs first)."""
    import warnings

    from pymatgen.analysis.bond_valence import BVAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            BVAnalyzer().get_valences(structure)
        return True
    except Exception:  # noqa: BLE001 - "Valences cannot be assigned!" and unknown elements alike
        return False


def eligible_head(cfg: RunConfig, table: pd.DataFrame, k: int, oracle: BVSEOracle | None = None) -> tuple[pd.DataFrame, dict]:
    """The first ``k`` rows of ``table`` (in its order) that the oracle can evaluate, and the counts
    of rows screened and skipped (``skipped_<reason>``).

    With ``verify.require_valences`` a row must have oxidation states bond valence can assign (a
    cheap test, made first); with ``verify.require_evaluable`` and an ``oracle`` it must also get
    barriers from the oracle without a failure (bond-valence parameters missing for a pair of ions,
    a timeout, ...). The oracle caches its results, so verifying the rows afterwards recomputes
    nothing. Without either requirement: the first ``k`` rows."""
    v = cfg.verify
    use_oracle = v.require_evaluable and oracle is not None
    if not v.require_valences and not use_oracle:
        return table.head(k), {"screened": min(k, len(table)), "eligible": min(k, len(table))}
    from pymatgen.core import Structure

    keep: list[int] = []
    screened, pos = 0, 0
    skipped: dict[str, int] = {}
    while len(keep) < k and pos < len(table):
        # about half of the generated Li candidates fail a screen: test twice what is missing at once (each
        # oracle call starts its worker pool, so many small calls cost more than a few extra structures)
        chunk = list(range(pos, min(len(table), pos + max(2 * (k - len(keep)), 16))))
        pos = chunk[-1] + 1
        structures = [Structure.from_str(t, fmt="cif") for t in table[TEXT_COLUMN].iloc[chunk]]
        reasons: list[str | None] = [None] * len(chunk)
        if v.require_valences:
            reasons = [None if valences_assignable(s) else "valences" for s in structures]
        if use_oracle:
            todo = [i for i, r in enumerate(reasons) if r is None]
            for i, res in zip(todo, oracle.evaluate([structures[i] for i in todo], label="BVSE screen",
                                                    every=max(len(todo), 1)), strict=True):
                reasons[i] = None if res.ok else res.failure
        for p, reason in zip(chunk, reasons, strict=True):
            screened += 1
            if reason is None:
                keep.append(p)
                if len(keep) == k:
                    break
            else:
                skipped[reason] = skipped.get(reason, 0) + 1
    return table.iloc[keep], {"screened": screened, "eligible": len(keep),
                              **{f"skipped_{r}": n for r, n in sorted(skipped.items())}}


def verify_round(cfg: RunConfig, k: int, out_dir: Path, verifier: Verifier, threshold: float) -> dict:
    """Verify the round's best ``verify.top_k`` scored candidates (that the oracle can evaluate, see
    :func:`eligible_head`); write ``verified.csv.gz`` and ``verify.json`` (the round's verification
    metrics, see :func:`verification_metrics`, plus how many ranked candidates were screened)."""
    rdir = round_dir(out_dir, k)
    scored = read_table(rdir / "scored.csv.gz")
    top, screen = eligible_head(cfg, rank_table(scored, cfg.rank, cfg.generate.target), cfg.verify.top_k,
                                verifier.oracle)
    ver = verifier(top["id"].astype(str).tolist(), _structures(top), label=f"round {k}")
    col = cfg.surrogate.column
    ver = ver.merge(top[["id", col, f"{col}_std", "formula"]].astype({"id": str}), on="id", how="left")
    write_table(ver, rdir / "verified.csv.gz")
    metrics = verification_metrics(ver, verifier.censored(ver[f"ver_{cfg.surrogate.target}"]), col, threshold)
    metrics.update(screen)
    atomic_write_text(rdir / "verify.json", strict_json(metrics, indent=2))
    return metrics


def verification_metrics(ver: pd.DataFrame, truth: np.ndarray, col: str, threshold: float) -> dict:
    """Hit rate (failures count as misses), best value, and the surrogate's error on the verified set
    (its predictions were made before the oracle ran)."""
    ok = ~np.isnan(truth)
    pred = ver[col].to_numpy(dtype=float)
    out = {
        "verified": len(ver),
        "oracle_ok": int(ok.sum()),
        "hits": int((truth[ok] < threshold).sum()),
        "hit_rate": float((truth[ok] < threshold).sum() / max(len(ver), 1)),
        "best_verified": float(truth[ok].min()) if ok.any() else math.nan,
        "surrogate_mae": float(np.abs(pred[ok] - truth[ok]).mean()) if ok.any() else math.nan,
        "surrogate_spearman": spearman(pred[ok], truth[ok]),
        "threshold": threshold,
    }
    pct = ver["chgnet_excess_percentile"].to_numpy(dtype=float)
    out["median_excess_percentile"] = float(np.nanmedian(pct)) if np.isfinite(pct).any() else math.nan
    return out


def verified_so_far(out_dir: Path, through: int) -> pd.DataFrame:
    """Every round's verified rows up to round ``through`` (inclusive), with their CIF text and the
    round that verified them (column ``round``)."""
    parts = []
    for k in range(through + 1):
        rdir = round_dir(out_dir, k)
        if (rdir / "verified.csv.gz").is_file():
            ver = read_table(rdir / "verified.csv.gz").astype({"id": str})
            acc = read_table(rdir / "accepted.csv.gz").astype({"id": str})[["id", TEXT_COLUMN]]
            parts.append(ver.merge(acc, on="id", how="left").assign(round=k))
    if not parts:
        return pd.DataFrame(columns=[*VERIFIED_COLUMNS, TEXT_COLUMN, "round"])
    return pd.concat(parts, ignore_index=True)


def learn_round(cfg: RunConfig, k: int, out_dir: Path, surrogate: str | Path, cap: float) -> Path:
    """Fine-tune ``surrogate`` on every result verified through round ``k`` plus a replay sample of
    its labels; write ``round_k/surrogate.pt``."""
    scfg = surrogate_config(cfg)
    ens = SurrogateEnsemble.load(surrogate, cfg.train.device)
    ver = verified_so_far(out_dir, k)
    ver = ver[ver["oracle_ok"].astype(bool)]
    labels = load_labelled(cfg.surrogate.labels, scfg.targets, cap)
    rng = np.random.default_rng(cfg.seed * 7 + k)
    replay = labels.iloc[rng.choice(len(labels), size=min(REPLAY, len(labels)), replace=False)]
    structures = [*replay["structure"], *_structures(ver)]
    y = np.concatenate([replay[cfg.surrogate.target].to_numpy(dtype=float),
                        ver[f"ver_{cfg.surrogate.target}"].astype(float).clip(upper=cap).to_numpy()])
    graphs = graphs_for(ens.cfg, structures)  # the graphs the tuned model reads (surrogate.start may differ)
    tuned = finetune_ensemble(ens, graphs, y[:, None], cfg.surrogate.finetune_epochs, seed=cfg.seed + k)
    return tuned.save(round_dir(out_dir, k) / "surrogate.pt")


# ---------------------------------------------------------------------------------- the end
def final_ranking(cfg: RunConfig, rounds: int, out_dir: Path, surrogate: str | Path) -> pd.DataFrame:
    """Every accepted candidate rescored with the last surrogate and ranked; verified columns joined
    where a round verified it. Returns the ranked table with its structure text."""
    accepted = accepted_table(out_dir, rounds)
    if accepted.empty:
        return accepted
    col = cfg.surrogate.column
    mean, std = predict(SurrogateEnsemble.load(surrogate, cfg.train.device), _structures(accepted))
    accepted[col], accepted[f"{col}_std"] = mean, std
    if cfg.surrogate.stability:
        for name in STABILITY_COLUMNS:
            accepted[name] = accepted["id"].astype(str).map(scored_column(out_dir, rounds, name))
    ranked = rank_table(accepted, cfg.rank, cfg.generate.target)
    ver = verified_so_far(out_dir, rounds - 1)
    ranked["verified_in_round"] = ranked["id"].map(dict(zip(ver["id"], ver["round"], strict=True)))
    keep = [c for c in VERIFIED_COLUMNS if c != "id"]
    if ver.empty:  # nothing verified yet: the same columns, empty
        return ranked.assign(**{c: np.nan for c in keep})
    return ranked.merge(ver[["id", *keep]], on="id", how="left")


def enrichment(cfg: RunConfig, ranked: pd.DataFrame, out_dir: Path, verifier: Verifier, threshold: float) -> dict:
    """Verify the top ``verify.final_top`` of the final ranking (that the oracle can evaluate, see
    :func:`eligible_head`), ``verify.baseline`` random accepted candidates, and as many random accepted
    candidates the oracle can evaluate (``baseline_eligible``), all seeded; return hit fractions and
    write the tables (``enrichment_<name>.csv``). ``top_fresh`` counts only top candidates no round
    verified (the surrogate never saw their oracle values)."""
    v = cfg.verify
    top, screen = eligible_head(cfg, ranked, v.final_top, verifier.oracle)
    rng = np.random.default_rng(cfg.seed + 99)
    shuffled = ranked.iloc[rng.permutation(len(ranked))]
    base = shuffled.head(v.baseline)
    base_eligible, base_screen = eligible_head(cfg, shuffled, v.baseline, verifier.oracle)
    result: dict = {"threshold": threshold, "hit_quantile": v.hit_quantile, "top_screened": screen["screened"],
                    "baseline_eligible_screened": base_screen["screened"]}
    screening = v.require_valences or v.require_evaluable
    result["top_skipped"] = {k[len("skipped_"):]: n for k, n in screen.items() if k.startswith("skipped_")}
    parts = [("top", top), ("baseline", base)] + ([("baseline_eligible", base_eligible)] if screening else [])
    for name, part in parts:
        ver = verifier(part["id"].tolist(), _structures(part), label=f"enrichment {name}")
        truth = verifier.censored(ver[f"ver_{cfg.surrogate.target}"])
        hits = np.nan_to_num(truth, nan=np.inf) < threshold
        table = part.drop(columns=[c for c in (*VERIFIED_COLUMNS[1:], TEXT_COLUMN) if c in part]).merge(ver, on="id")
        write_table(table, Path(out_dir) / f"enrichment_{name}.csv")
        result[name] = {"n": len(part), "oracle_ok": int(ver["oracle_ok"].sum()), "hits": int(hits.sum()),
                        "hit_fraction": float(hits.mean()) if len(part) else math.nan,
                        "median_verified": float(np.nanmedian(truth)) if np.isfinite(truth).any() else math.nan}
        if name == "top":
            fresh = part["verified_in_round"].isna().to_numpy() if "verified_in_round" in part else np.ones(len(part), bool)
            result["top_fresh"] = {"n": int(fresh.sum()), "hits": int(hits[fresh].sum()),
                                   "hit_fraction": float(hits[fresh].mean()) if fresh.any() else math.nan}
    top_rate = result["top"]["hit_fraction"]
    result["enrichment_vs_quantile"] = top_rate / v.hit_quantile
    for name in ("baseline", "baseline_eligible"):
        if name in result:  # a ratio to a zero (or missing) rate is undefined: null, not Infinity, in the JSON
            base_rate = result[name]["hit_fraction"]
            ok = base_rate and math.isfinite(base_rate) and math.isfinite(top_rate)
            result[f"enrichment_vs_{name}"] = top_rate / base_rate if ok else None
    atomic_write_text(Path(out_dir) / "enrichment.json", strict_json(result, indent=2))
    return result


def verified_hits(cfg: RunConfig, out_dir: Path, before_round: int, threshold: float, cap: float) -> list:
    """Structures verified as hits in the rounds before ``before_round`` (the generator's feedback)."""
    if before_round <= 0:
        return []
    ver = verified_so_far(out_dir, before_round - 1)
    if ver.empty:
        return []
    truth = ver[f"ver_{cfg.surrogate.target}"].astype(float).clip(upper=cap)
    return _structures(ver[ver["oracle_ok"].astype(bool) & (truth < threshold)])
