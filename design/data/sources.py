"""Find a dataset file: the project's cache, then a local mirror, then the public URL with a checksum.

Paths are relative to the data root, e.g. ``crystals/mp_20_biternary/val.csv.gz``.

1. ``$INVDES_DATA_CACHE/<path>`` (default ``data/cache/`` in the project),
2. ``$INVDES_DATA_MIRROR/<path>`` (a read-only local copy of the datasets); when the variable is
   unset, ``../shared/data`` beside the project is used if it exists (the team and CI layout),
3. the URL in ``data/manifest.yaml``, downloaded into the cache and kept only if its sha256 matches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

import yaml

from design.utils import atomic_path

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIRROR_ENV = "INVDES_DATA_MIRROR"
CACHE_ENV = "INVDES_DATA_CACHE"


class DataNotFoundError(FileNotFoundError):
    """No copy of a dataset file could be found or fetched."""


def cache_dir() -> Path:
    """Root of the project's data cache (git-ignored)."""
    return Path(os.environ.get(CACHE_ENV, PROJECT_ROOT / "data" / "cache")).resolve()


def mirror_dir() -> str | None:
    """The local mirror folder: ``$INVDES_DATA_MIRROR``, else ``../shared/data`` beside the project if present."""
    env = os.environ.get(MIRROR_ENV)
    if env:
        return env
    default = PROJECT_ROOT.parent / "shared" / "data"
    return str(default) if default.is_dir() else None


def manifest(path: Path | None = None) -> dict[str, dict]:
    path = path or PROJECT_ROOT / "data" / "manifest.yaml"
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("files", {})


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str | None) -> None:
    log.info("downloading %s", url)
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        if sha256 is not None:
            got = sha256_of(tmp)
            if got != sha256:
                raise DataNotFoundError(
                    f"download of {url} has sha256 {got}, expected {sha256}; the public file changed. "
                    f"Put the expected file under {dest.parent} or set {MIRROR_ENV} to a folder that has it"
                )


def resolve(relpath: str) -> Path:
    """Return a local path for dataset file ``relpath``; download it if needed."""
    rel = Path(relpath)
    if rel.is_absolute():
        if rel.is_file():
            return rel
        raise DataNotFoundError(f"dataset file {rel} does not exist")
    cached = cache_dir() / rel
    if cached.is_file():
        return cached
    mirror = mirror_dir()
    if mirror:
        mirrored = Path(mirror).expanduser().resolve() / rel
        if mirrored.is_file():
            return mirrored
    entry = manifest().get(str(rel).replace(os.sep, "/"))
    if entry is None:
        where = f"${MIRROR_ENV}={mirror}" if mirror else f"${MIRROR_ENV} (unset)"
        raise DataNotFoundError(
            f"dataset file {relpath!r} is not in the cache ({cache_dir()}), not in {where}, "
            "and has no URL in data/manifest.yaml; set INVDES_DATA_MIRROR to a folder holding it "
            "or add it to the manifest"
        )
    try:
        _download(entry["url"], cached, entry.get("sha256"))
    except DataNotFoundError:
        raise
    except OSError as err:
        raise DataNotFoundError(
            f"dataset file {relpath!r} is not local and its download from {entry['url']} failed ({err}); "
            f"set {MIRROR_ENV} to a folder with a copy, or retry with network access"
        ) from None
    return cached
