"""``invdes bench molecule``: the MOSES-protocol benchmark of a trained molecule generator.

One call samples ``n`` molecules (30,000 in MOSES), times every step and computes
(:mod:`design.metrics.molecule` has the definitions):

* valid, unique@1k, unique@10k, novelty against the full MOSES training split (canonical SMILES),
  Filters, over all valid samples;
* FCD/Test, SNN/Test, Frag/Test, Scaf/Test against the reference split (default the generator
  config's ``data.reference``, MOSES test), and IntDiv. Frag and Scaf use every valid sample and
  the whole reference split. On one CPU thread the quadratic and ChemNet metrics take a seeded random
  subset (``fcd_samples`` valid molecules against ``fcd_reference`` reference molecules for FCD,
  ``snn_samples`` for SNN against the whole reference, ``intdiv_samples`` for IntDiv); the sizes
  are in ``info``. The reference split is shuffled before it is subsampled.
* throughput in *valid* molecules per second for sample + decode + validity (the generator call,
  assembling and sanitising the RDKit molecules, which on CPU overlaps the sampling of later batches
  in worker processes, ``generate.sample_workers``; the structural check) and for the whole generate ->
  score (discriminator, penalty) -> filter (exact checks with the filters, uniqueness, novelty against
  the generator's training set) -> rank step; and the generator's training wall time;
* how well the model explains held-out molecules (:func:`heldout_fit`): the negative ELBO in nats per
  molecule on ``elbo_samples`` reference molecules (reconstruction from one posterior sample plus the
  KL), a likelihood bound that, unlike the training loss at ``beta_kl < 1``, compares generators
  trained with different KL weights.

Reference statistics (fingerprints, fragment and scaffold counts, ChemNet moments, the training
split's canonical SMILES) are cached on disk keyed by the file's sha256.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rdkit import Chem

from design.api import Generator
from design.benchmark import cost_entries, discovery_step, run_info
from design.data.molecules import read_smiles_table
from design.domains.molecule import chemistry
from design.domains.molecule.tokens import EncodeError, MoleculeTensors
from design.metrics import molecule as mm
from design.utils import atomic_path

log = logging.getLogger(__name__)

REFERENCE_VERSION = 1
MOSES_TRAIN = "molecules/moses/train.csv.gz"

# (metric, target, comparison, published CharRNN / VAE / LatentGAN on MOSES)
TARGETS: list[tuple[str, float | None, str, str]] = [
    ("valid", 0.98, ">=", "0.975 / 0.977 / 0.897"),
    ("unique@1k", 0.99, ">=", "1.000 / 1.000 / 1.000"),
    ("unique@10k", 0.99, ">=", "0.999 / 0.998 / 0.997"),
    ("novelty", 0.80, ">=", "0.842 / 0.695 / 0.950"),
    ("FCD/Test", 1.5, "<=", "0.073 / 0.099 / 0.296"),
    ("SNN/Test", None, ">=", "0.601 / 0.626 / 0.538"),
    ("Frag/Test", None, ">=", "1.000 / 0.999 / 0.999"),
    ("Scaf/Test", None, ">=", "0.924 / 0.939 / 0.886"),
    ("IntDiv", 0.83, ">=", "0.856 / 0.856 / 0.857"),
    ("Filters", 0.95, ">=", "0.994 / 0.997 / 0.973"),
    ("sample_decode_valid_per_s", 2000.0, ">=", ""),
    ("train_wall_min", 45.0, "<=", ""),
]


def _cache_path(relpath: str, name: str) -> Path:
    from design.data.sources import cache_dir, resolve, sha256_of

    digest = sha256_of(resolve(relpath))[:16]
    return cache_dir() / "moses_reference" / relpath.replace("/", "__") / f"v{REFERENCE_VERSION}_{digest}_{name}"


def _read_smiles(relpath: str) -> list[str]:
    from design.data.sources import resolve

    return read_smiles_table(resolve(relpath))["smiles"].tolist()


def reference_stats(relpath: str) -> dict[str, Any]:
    """Fingerprints [N, 1024], fragment and scaffold counts of a reference split (cached), and its
    SMILES in a seeded random order (for subsets)."""
    smiles = _read_smiles(relpath)
    order = np.random.default_rng(0).permutation(len(smiles))
    shuffled = [smiles[i] for i in order]
    path = _cache_path(relpath, "stats.npz")
    if path.is_file():
        blob = np.load(path, allow_pickle=False)
        counts = json.loads(str(blob["counts"]))
        log.info("loaded reference statistics of %s from cache", relpath)
        return {"fps": np.unpackbits(blob["fps"], axis=1)[:, : mm.N_BITS], "frag": Counter(counts["frag"]),
                "scaf": Counter(counts["scaf"]), "smiles": shuffled, "n": int(blob["n"])}
    log.info("computing reference statistics of %d molecules of %s (cached afterwards)", len(smiles), relpath)
    mols = [m for m in (chemistry.mol_from_smiles(s) for s in shuffled) if m is not None]
    fps = mm.morgan_bits(mols)
    frag, scaf = mm.count(mols, mm.fragments), mm.count(mols, mm.scaffold)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, fps=np.packbits(fps, axis=1), n=len(mols),
                                counts=json.dumps({"frag": frag, "scaf": scaf}))
    return {"fps": fps, "frag": frag, "scaf": scaf, "smiles": shuffled, "n": len(mols)}


def reference_chemnet(relpath: str, smiles_shuffled: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """ChemNet moments of the first ``k`` molecules of the shuffled reference (cached)."""
    path = _cache_path(relpath, f"chemnet_{k}.npz")
    if path.is_file():
        blob = np.load(path)
        return blob["mu"], blob["sigma"]
    log.info("ChemNet activations of %d reference molecules (cached afterwards)", k)
    mu, sigma = mm.chemnet_stats(smiles_shuffled[:k])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, mu=mu, sigma=sigma)
    return mu, sigma


def training_smiles(relpath: str) -> set[str]:
    """Canonical SMILES of a whole training split (cached as gzipped text)."""
    path = _cache_path(relpath, "canonical.smi.gz")
    if path.is_file():
        with gzip.open(path, "rt") as f:
            return {line.rstrip("\n") for line in f}
    raw = _read_smiles(relpath)
    log.info("canonicalising %d training molecules of %s (cached afterwards)", len(raw), relpath)
    canon = sorted({Chem.MolToSmiles(m) for m in (chemistry.mol_from_smiles(s) for s in raw) if m is not None})
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt") as f:
            f.write("".join(s + "\n" for s in canon))
    return set(canon)


def _subset(items: list, k: int, rng: np.random.Generator) -> list:
    if k >= len(items):
        return list(items)
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def run_molecule_benchmark(
    generator: Generator,
    n: int = 30_000,
    seed: int = 0,
    reference: str | None = None,
    train: str = MOSES_TRAIN,
    fcd_samples: int = 10_000,
    fcd_reference: int = 10_000,
    snn_samples: int = 5_000,
    intdiv_samples: int = 10_000,
    elbo_samples: int = 5_000,
) -> dict[str, Any]:
    """Run the benchmark; return a flat dict of metrics plus ``info`` (see module docstring). Sampling
    follows the generator's ``generate`` settings (``generator.with_generate(...)`` changes them)."""
    if generator.domain.name != "molecule":
        raise ValueError(f"the molecule benchmark needs a molecule generator, got domain {generator.domain.name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    for name, k in (("fcd_samples", fcd_samples), ("fcd_reference", fcd_reference), ("snn_samples", snn_samples),
                    ("intdiv_samples", intdiv_samples), ("elbo_samples", elbo_samples)):
        if k < 2:
            raise ValueError(f"{name} must be >= 2, got {k}")
    cfg = generator.config
    reference = reference or cfg.data.reference
    t: dict[str, float] = {}

    # -- sample -> decode -> validity (the one-shot path a user pays for)
    start = time.perf_counter()
    batch = generator.sample(n, seed=seed, score=False, decode=True)
    t["sample_decode"] = time.perf_counter() - start
    mols = batch.objects  # RDKit molecules, sanitised where they can be
    start = time.perf_counter()
    structural = [not chemistry.structural_reasons(m if m.GetIntProp("invdes_sanitized") else None) for m in mols]
    t["validity"] = time.perf_counter() - start
    n_valid = int(sum(structural))
    log.info("sampled, decoded and sanitised %d molecules (%d valid) in %.1fs", n, n_valid,
             t["sample_decode"] + t["validity"])
    if n_valid == 0:
        raise ValueError(f"none of the {n} generated molecules is valid; nothing to compare with {reference}")

    # -- score -> filter (exact checks, uniqueness, novelty vs the training set) -> rank
    cands, counts, train_objs = discovery_step(generator, batch.tensors, mols, None, t)

    # -- MOSES metrics
    valid_mols = [m for m, ok in zip(mols, structural, strict=True) if ok]
    canonical = [Chem.MolToSmiles(m) for m in valid_mols]
    out: dict[str, Any] = {"n": n, "n_valid": n_valid, "valid": n_valid / n}
    out["unique@1k"] = mm.unique_at(canonical, 1000)
    out["unique@10k"] = mm.unique_at(canonical, 10_000)
    start = time.perf_counter()
    out["novelty"] = mm.novelty(canonical, training_smiles(train))
    t["novelty"] = time.perf_counter() - start
    out["Filters"] = sum(c.check.compositional for c in cands) / n_valid
    rejected = Counter(r for c in cands if c.check.structural
                       for r in {"PAINS" if r.startswith("PAINS") else r for r in c.check.reasons})
    ref = reference_stats(reference)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    fcd_set = _subset(canonical, fcd_samples, rng)
    mu_g, sigma_g = mm.chemnet_stats(fcd_set)
    mu_r, sigma_r = reference_chemnet(reference, ref["smiles"], min(fcd_reference, len(ref["smiles"])))
    out["FCD/Test"] = mm.frechet(mu_g, sigma_g, mu_r, sigma_r)
    t["fcd"] = time.perf_counter() - start
    start = time.perf_counter()
    fps = mm.morgan_bits(valid_mols)
    snn_idx = rng.choice(len(fps), size=min(snn_samples, len(fps)), replace=False)
    out["SNN/Test"] = mm.snn(fps[snn_idx], ref["fps"])
    div_idx = rng.choice(len(fps), size=min(intdiv_samples, len(fps)), replace=False)
    out["IntDiv"] = mm.internal_diversity(fps[div_idx])
    t["snn_intdiv"] = time.perf_counter() - start
    start = time.perf_counter()
    fit = heldout_fit(generator, ref["smiles"][:elbo_samples], seed)
    out["NLL_bound/Test"] = fit.pop("negative_elbo", None)
    t["elbo"] = time.perf_counter() - start
    start = time.perf_counter()
    out["Frag/Test"] = mm.cosine(mm.count(valid_mols, mm.fragments), ref["frag"])
    out["Scaf/Test"] = mm.cosine(mm.count(valid_mols, mm.scaffold), ref["scaf"], drop_empty=True)
    t["frag_scaf"] = time.perf_counter() - start
    out["discovery_unique"] = counts.unique
    out["discovery_novel_vs_training_subset"] = counts.novel

    # -- throughput and training cost
    one_shot = t["sample_decode"] + t["validity"]
    out["sample_decode_valid_per_s"] = n_valid / one_shot
    out["generate_filter_rank_valid_per_s"] = n_valid / (one_shot + t["score"] + t["filter"] + t["rank"])
    out.update(cost_entries(generator, t))
    out["info"] = {
        **run_info(generator, seed, ("torch", "rdkit", "selfies", "fcd"), n),
        "reference": reference,
        "reference_size": ref["n"],
        "novelty_against": train,
        "generator_training_split": cfg.data.train,
        "generator_training_size": len(train_objs),
        "fcd_samples": len(fcd_set),
        "fcd_reference": min(fcd_reference, len(ref["smiles"])),
        "snn_samples": int(len(snn_idx)),
        "intdiv_samples": int(len(div_idx)),
        "heldout_fit": fit,
        # what the filters reject: the fraction of valid molecules with each reason (PAINS families together)
        "filter_rejections": {k: v / n_valid for k, v in rejected.most_common()},
    }
    return out


def heldout_fit(generator: Generator, smiles: list[str], seed: int = 0) -> dict[str, Any]:
    """The generator's negative ELBO and its parts (``Generator.negative_elbo``, nats per molecule) on
    the molecules of ``smiles`` it can encode, conditioned on their own properties (RDKit descriptors);
    ``skipped`` counts the rest by reason. Without descriptors for every property the generator is
    conditioned on (a dataset column such as pIC50), there is nothing to condition on: only the reason."""
    missing = [p for p in generator.property_names if p not in chemistry.DESCRIPTORS]
    if missing:
        return {"skipped_all": f"properties {missing} are not RDKit descriptors; no held-out condition"}
    rows, props, skipped = [], [], Counter()
    for s in smiles:
        mol = chemistry.mol_from_smiles(s)
        if mol is None:
            skipped["SMILES does not parse"] += 1
            continue
        try:  # the string, not the molecule: encode would write the molecule as SMILES and parse it again
            rows.append(generator.domain.encode([s]))
        except EncodeError as err:
            skipped[str(err)] += 1
            continue
        props.append([chemistry.descriptor(p, mol) for p in generator.property_names])
    if not rows:
        return {"skipped": dict(skipped)}
    tensors = MoleculeTensors(torch.cat([r.tokens for r in rows]), rows[0].vocab)
    fit = generator.negative_elbo(tensors, torch.tensor(props, dtype=torch.float32), seed=seed)
    return {**fit, "n": len(rows), "skipped": dict(skipped)}


PUBLISHED = "CharRNN / VAE / LatentGAN (MOSES)"


def format_table(metrics: dict[str, Any]) -> str:
    """The molecule benchmark as a plain-text table (targets first, then the other numbers)."""
    from design.benchmark import format_table as table

    return table(metrics, TARGETS, PUBLISHED)


def write_json(metrics: dict[str, Any], path: str | Path) -> Path:
    from design.benchmark import write_json as write

    return write(metrics, path, TARGETS)
