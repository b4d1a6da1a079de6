"""SMILES corpora (MOSES CSVs with a ``SMILES`` column, or ``.smi`` files of one SMILES per line)
-> SELFIES token tensors and property labels, cached.

``limit`` takes the first N rows after a seeded shuffle (``subsample="random"``; MOSES train is
ordered, so its first rows are not a fair sample) or the first N rows as they are (``"first"``).
A row is skipped, counted by reason and logged, never fatal, when its SMILES does not parse, it
has several fragments, its SELFIES is longer than ``max_tokens`` or a property is missing or not
finite. Property names that are not columns of the file are computed by RDKit
(:data:`design.domains.molecule.chemistry.DESCRIPTORS`). Encoded tensors are cached under
``<data cache>/features/`` keyed by the file's sha256 and every argument that changes them.
"""

from __future__ import annotations

import functools
import gzip
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from design.data.sources import cache_dir, resolve, sha256_of
from design.domains.base import EncodedDataset
from design.domains.molecule.chemistry import descriptor, mol_from_smiles
from design.domains.molecule.tokens import (
    EncodeError,
    MoleculeTensors,
    Vocabulary,
    mol_to_selfies,
    selfies_to_indices,
)
from design.parallel import chunked_map, default_workers
from design.utils import atomic_path

log = logging.getLogger(__name__)

FEATURIZER_VERSION = 1
SMILES_COLUMNS = ("SMILES", "smiles", "Smiles")


class DatasetFormatError(ValueError):
    """A SMILES file whose layout does not match what was asked."""


def read_smiles_table(path: Path) -> pd.DataFrame:
    """A DataFrame with a ``smiles`` column (plus the file's other columns for CSVs)."""
    name = path.name.lower()
    if name.endswith((".smi", ".smi.gz", ".txt", ".txt.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt") as f:
            rows = [line.split()[0] for line in f if line.strip()]
        if not rows:
            raise DatasetFormatError(f"SMILES file {path} is empty; point data.train at a file with one SMILES per line")
        return pd.DataFrame({"smiles": rows})
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DatasetFormatError(f"dataset file {path} is empty; point data.train at a SMILES CSV") from None
    col = next((c for c in SMILES_COLUMNS if c in df.columns), None)
    if col is None:
        raise DatasetFormatError(
            f"dataset file {path} has no SMILES column (one of {list(SMILES_COLUMNS)}); it has {list(df.columns)}. "
            "Use a CSV with a SMILES column or a .smi file"
        )
    return df.rename(columns={col: "smiles"})


def pick_rows(n: int, limit: int | None, subsample: str, seed: int) -> np.ndarray:
    """Row indices: all, the first ``limit``, or ``limit`` drawn at random with ``seed`` (in drawn order)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if subsample == "first":
        return np.arange(limit)
    return np.random.default_rng(seed).permutation(n)[:limit]


def _encode_rows(smiles: list[str], values: dict[str, np.ndarray], properties: list[str], max_tokens: int,
                 root: str = "canonical"):
    """Canonical SMILES, SELFIES, property rows and skip reasons of each input row; on a process pool
    for large inputs (RDKit parsing, the SELFIES encoder and QED cost about 3.5 ms a molecule)."""
    items = [(smi, [float(values[p][i]) if p in values else None for p in properties]) for i, smi in enumerate(smiles)]
    results = chunked_map(functools.partial(_encode_chunk, properties=properties, max_tokens=max_tokens, root=root), items,
                          default_workers(len(items)), chunk=2000, label="SELFIES encoding", every=20_000)
    out_smiles, out_selfies, ys = [], [], []
    skipped: Counter[str] = Counter()
    for r in results:
        if isinstance(r, str):
            skipped[r] += 1
        else:
            out_smiles.append(r[0])
            out_selfies.append(r[1])
            ys.append(r[2])
    return out_smiles, out_selfies, ys, skipped


def _encode_chunk(items: list[tuple], properties: list[str], max_tokens: int, root: str = "canonical") -> list:
    """Per (SMILES, given property values or None) item: (canonical SMILES, SELFIES, property row),
    or the reason it is skipped."""
    import selfies as sf

    out: list = []
    for smi, given in items:
        mol = mol_from_smiles(smi) if isinstance(smi, str) else None
        if mol is None:
            out.append("SMILES does not parse")
            continue
        try:
            canonical, selfies = mol_to_selfies(mol, root)
            if sf.len_selfies(selfies) > max_tokens:
                raise EncodeError(f"more than max_tokens={max_tokens} SELFIES tokens")
        except EncodeError as err:
            out.append(str(err))
            continue
        row = [v if v is not None else descriptor(p, mol) for p, v in zip(properties, given, strict=True)]
        if not all(np.isfinite(row)):
            out.append("property not finite")
            continue
        out.append((canonical, selfies, row))
    return out


def load_molecule_dataset(
    relpath: str,
    properties: list[str],
    max_tokens: int,
    limit: int | None = None,
    subsample: str = "random",
    seed: int = 0,
    root: str = "canonical",
) -> EncodedDataset:
    """Resolve, read and encode a SMILES corpus, using the cache when it matches (see module docstring).

    ``ids`` of the result are canonical RDKit SMILES; ``tensors`` carry the fitted vocabulary; the SELFIES
    start at ``root`` (``tokens.root_atom``).
    """
    path = resolve(relpath)
    digest = sha256_of(path)[:16]
    rooted = "" if root == "canonical" else f"_r{root}"  # canonical roots keep the caches written before the option
    key = f"{'-'.join(properties)}_t{max_tokens}_l{limit}_{subsample}{seed}{rooted}_v{FEATURIZER_VERSION}_{digest}"
    cache = cache_dir() / "features" / relpath.replace("/", "__") / f"{key}.pt"
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            log.info("loaded %d encoded molecules of %s from cache", len(blob["ids"]), relpath)
            tensors = MoleculeTensors(blob["tokens"], tuple(blob["vocab"]))
            return EncodedDataset(tensors, blob["y"], blob["ids"], blob["properties"], blob["skipped"])
        except Exception as err:  # a broken cache file is rebuilt, not fatal
            log.warning("feature cache %s unreadable (%s); rebuilding", cache, err)
    df = read_smiles_table(path)
    rows = pick_rows(len(df), limit, subsample, seed)
    smiles = df["smiles"].to_numpy()[rows].tolist()
    values = {p: pd.to_numeric(df[p], errors="coerce").to_numpy()[rows] for p in properties if p in df.columns}
    log.info("encoding %d molecules of %s as SELFIES", len(smiles), relpath)
    canon, selfies, ys, skipped = _encode_rows(smiles, values, list(properties), max_tokens, root)
    if skipped:
        log.warning("%s: skipped %d of %d rows: %s", relpath, sum(skipped.values()), len(smiles), dict(skipped))
    if not canon:
        raise DatasetFormatError(f"no usable rows in {relpath} (skipped: {dict(skipped)}); check the file and "
                                 "molecule.max_tokens")
    vocab = Vocabulary.fit(selfies)
    index = vocab.index
    tokens = torch.tensor([selfies_to_indices(s, index, max_tokens) for s in selfies], dtype=torch.long)
    y = torch.tensor(np.array(ys, dtype=np.float64), dtype=torch.float32).reshape(len(ys), len(properties))
    ds = EncodedDataset(MoleculeTensors(tokens, vocab.tokens), y, canon, list(properties), dict(skipped))
    blob = {"tokens": tokens, "vocab": list(vocab.tokens), "y": y, "ids": canon, "properties": list(properties),
            "skipped": dict(skipped)}
    with atomic_path(cache) as tmp:
        torch.save(blob, tmp)
    return ds
