"""CDVAE-format crystal CSVs (``material_id``, ``cif``, property columns) -> encoded tensors, cached.

A row is skipped, counted by reason and logged, never fatal, when its CIF does not parse, it is
disordered, it does not fit ``max_sites``, or a requested property is missing or not finite.
Featurised tensors are cached under ``<data cache>/features/`` keyed by the source file's sha256
and every argument that changes the result, so the second load of a split takes well under a second.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from design.data.sources import cache_dir, resolve, sha256_of
from design.domains.base import EncodedDataset
from design.domains.crystal.tensors import EncodeError, encode_structure, stack
from design.parallel import chunked_map, default_workers
from design.utils import atomic_path

log = logging.getLogger(__name__)

FEATURIZER_VERSION = 2  # 2: lower-triangular lattice
REQUIRED_COLUMNS = ("material_id", "cif")


class DatasetFormatError(ValueError):
    """A dataset file whose columns do not match what was asked."""


def read_table(path: Path, properties: list[str], limit: int | None, property_table: Path | None = None) -> pd.DataFrame:
    """The dataset rows with ``material_id``, ``cif`` and the property columns; properties missing
    from the file are taken from ``property_table`` (joined on ``material_id``; NaN where it has no row)."""
    try:
        df = pd.read_csv(path, nrows=limit)
    except pd.errors.EmptyDataError:
        raise DatasetFormatError(f"dataset file {path} is empty; point data.train at a CDVAE-format CSV") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if property_table is not None:
        df = join_property_table(df, property_table, [p for p in properties if p not in df.columns])
    missing += [c for c in properties if c not in df.columns]
    if missing:
        raise DatasetFormatError(
            f"dataset file {path} lacks columns {missing}; it has {list(df.columns)}. "
            "Use a CDVAE-format CSV (material_id, cif, property columns), fix data.properties "
            "or name a data.property_table that has them"
        )
    return df


def join_property_table(df: pd.DataFrame, table: Path, columns: list[str]) -> pd.DataFrame:
    """``df`` with ``columns`` of the CSV ``table`` (keyed by ``material_id``) joined on; rows the
    table lacks get NaN (and are later skipped as "property not finite")."""
    try:
        extra = pd.read_csv(table)
    except pd.errors.EmptyDataError:
        raise DatasetFormatError(f"property table {table} is empty; rebuild it") from None
    absent = [c for c in ("material_id", *columns) if c not in extra.columns]
    if absent:
        raise DatasetFormatError(
            f"property table {table} lacks columns {absent}; it has {list(extra.columns)}. "
            "Fix data.properties or rebuild the table"
        )
    if extra["material_id"].duplicated().any():
        dup = extra.loc[extra["material_id"].duplicated(), "material_id"].iloc[0]
        raise DatasetFormatError(f"property table {table} has material_id {dup!r} more than once")
    extra = extra[["material_id", *columns]].assign(material_id=lambda t: t["material_id"].astype(str))
    if "material_id" not in df.columns:
        return df
    out = df.assign(material_id=df["material_id"].astype(str)).merge(extra, on="material_id", how="left")
    return out


def _parse_row(cif: object, props: list[float], max_sites: int, standardize: bool):
    from pymatgen.core import Structure

    if not isinstance(cif, str) or not cif.strip():
        return "empty cif", None
    if not all(np.isfinite(props)):
        return "property not finite", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
    except Exception:  # pymatgen raises many types for broken CIF text
        return "cif does not parse", None
    try:
        return None, encode_structure(structure, max_sites, standardize)
    except EncodeError as err:
        reason = str(err)
        if "sites in the primitive cell" in reason:
            reason = f"more than max_sites={max_sites} sites"
        return reason, None


def _parse_chunk(rows: list) -> list:
    """[(cif, props, max_sites, standardize), ...] -> [(skip reason or None, encoded or None), ...]"""
    return [_parse_row(*row) for row in rows]


def featurize_table(
    df: pd.DataFrame,
    properties: list[str],
    max_sites: int,
    standardize: bool = True,
    source: str = "",
    workers: int | None = None,
) -> EncodedDataset:
    parts, ys, ids = [], [], []
    skipped: Counter[str] = Counter()
    y_all = df[list(properties)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    n = len(df)
    if workers is None:
        workers = default_workers(n)
    rows = [(cif, y, max_sites, standardize) for cif, y in zip(df["cif"], y_all, strict=True)]
    parsed = chunked_map(_parse_chunk, rows, workers, label=f"featurised rows of {source}")
    for i, (mid, (reason, enc)) in enumerate(zip(df["material_id"], parsed, strict=True)):
        if reason is not None:
            skipped[reason] += 1
            log.debug("skip row %d (%s): %s", i, mid, reason)
        else:
            parts.append(enc)
            ys.append(y_all[i])
            ids.append(str(mid))
    if skipped:
        log.warning("%s: skipped %d of %d rows: %s", source, sum(skipped.values()), n, dict(skipped))
    y = torch.tensor(np.array(ys), dtype=torch.float32).reshape(len(ys), len(properties))
    return EncodedDataset(stack(parts, max_sites), y, ids, list(properties), dict(skipped))


def load_crystal_dataset(
    relpath: str,
    properties: list[str],
    max_sites: int,
    limit: int | None = None,
    standardize: bool = True,
    property_table: str | Path | None = None,
) -> EncodedDataset:
    """Resolve, read and featurise a CDVAE-format CSV, using the feature cache when it matches.

    ``property_table``: a CSV keyed by ``material_id`` that supplies the properties the dataset
    file lacks (e.g. oracle labels, see :func:`join_property_table`)."""
    path = resolve(relpath)
    digest = sha256_of(path)[:16]
    table = None
    if property_table is not None:
        table = Path(property_table).resolve()
        if not table.is_file():
            raise DatasetFormatError(
                f"data.property_table {property_table} does not exist; build it first (see configs/electrolyte.yaml)"
            )
        digest += "_" + sha256_of(table)[:16]
    key = f"{'-'.join(properties)}_s{max_sites}_l{limit}_std{int(standardize)}_v{FEATURIZER_VERSION}_{digest}"
    cache = cache_dir() / "features" / relpath.replace("/", "__") / f"{key}.pt"
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            from design.domains.crystal.tensors import CrystalTensors

            tensors = CrystalTensors(blob["z"], blob["frac"], blob["lattice"])
            log.info("loaded %d featurised crystals of %s from cache", len(blob["ids"]), relpath)
            return EncodedDataset(tensors, blob["y"], blob["ids"], blob["properties"], blob["skipped"])
        except Exception as err:  # a broken cache file is rebuilt, not fatal
            log.warning("feature cache %s unreadable (%s); rebuilding", cache, err)
    df = read_table(path, properties, limit, table)
    ds = featurize_table(df, properties, max_sites, standardize, source=relpath)
    if len(ds) == 0:
        raise DatasetFormatError(
            f"no usable rows in {relpath} (skipped: {ds.skipped}); check the file and data.max_sites"
        )
    blob = {
        "z": ds.tensors.z,
        "frac": ds.tensors.frac,
        "lattice": ds.tensors.lattice,
        "y": ds.y,
        "ids": ds.ids,
        "properties": ds.property_names,
        "skipped": ds.skipped,
    }
    with atomic_path(cache) as tmp:
        torch.save(blob, tmp)
    return ds
