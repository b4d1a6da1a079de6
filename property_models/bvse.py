"""The physics oracle of the electrolyte search: bond-valence site energy (BVSE) Li+ migration barriers.

For a structure, :func:`compute_barriers` assigns oxidation states (pymatgen's ``BVAnalyzer``),
maps the BVSE of a Li+ probe ion on a grid (the ``bvlain`` package: Morse bond-valence terms
plus screened Coulomb repulsion from the framework), and returns the percolation barriers
``E_1D``, ``E_2D``, ``E_3D`` in eV: the lowest energy above the minimum at which the accessible
region of the grid connects across the cell in one, two and three dimensions. A barrier above
``encut`` is infinite (no migration path at that energy).

:class:`BVSEOracle` evaluates many structures: every structure in its own worker process with a
time limit (a ``pebble`` process pool; a worker past the limit is killed and replaced), cached on
disk by a hash of the structure and the settings, so a rerun or a resumed job computes only what is
missing. A structure the method cannot handle gives a recorded failure with its reason, never an
exception:

* ``no_mobile_ion``: no Li in the structure;
* ``disordered``: partial occupancies (order the structure first);
* ``valences``: oxidation states cannot be assigned by bond valence;
* ``parameters``: bond-valence parameters missing for a pair of ions;
* ``timeout``: over the time limit (cached with the limit: a larger limit retries);
* ``error``: anything else (the message is kept).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

from pymatgen.core import Structure

from design.utils import atomic_write_text

log = logging.getLogger(__name__)

FAILURES = ("no_mobile_ion", "disordered", "valences", "parameters", "timeout", "error")


@dataclass(frozen=True)
class BVSESettings:
    """What defines a BVSE result; every field enters the cache key except ``time_limit_s``."""

    mobile_ion: str = "Li1+"
    resolution: float = 0.2  # Angstrom between grid points (bvlain: never below 0.05)
    encut: float = 5.0  # eV; barriers above it are infinite
    r_cut: float = 10.0  # Angstrom, probe-framework interaction cutoff
    time_limit_s: float = 60.0

    def __post_init__(self):
        if not 0.05 <= self.resolution <= 1.0:
            raise ValueError(f"resolution={self.resolution} A is outside [0.05, 1.0]; 0.2 is the usual choice")
        if not self.encut > 0 or not self.r_cut > 0:
            raise ValueError(f"encut={self.encut} eV and r_cut={self.r_cut} A must be > 0")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s={self.time_limit_s} must be > 0 seconds")

    @property
    def element(self) -> str:
        return "".join(c for c in self.mobile_ion if c.isalpha())

    def defining(self) -> dict:
        d = asdict(self)
        d.pop("time_limit_s")
        return d


@dataclass
class OracleResult:
    """One structure's barriers (eV; ``inf`` above ``encut``) or its failure reason."""

    key: str
    ok: bool
    e_1d: float = math.nan
    e_2d: float = math.nan
    e_3d: float = math.nan
    failure: str | None = None  # one of FAILURES
    message: str = ""
    seconds: float = 0.0
    time_limit_s: float | None = None  # for timeouts: the limit that was hit
    cached: bool = field(default=False, compare=False)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("cached")
        return json.dumps(d, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> OracleResult:
        return cls(**json.loads(text), cached=True)


class OracleFailure(Exception):
    """A structure the oracle cannot handle; ``reason`` is one of :data:`FAILURES`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def structure_key(structure: Structure, settings: BVSESettings) -> str:
    """sha256 of the lattice, the sites (species, occupancy, fractional coordinates rounded to
    1e-4, in a sorted order) and the settings that define the result."""
    sites = sorted(
        (
            sorted((str(sp), round(float(occ), 4)) for sp, occ in site.species.items()),
            [round(float(x) % 1.0, 4) % 1.0 for x in site.frac_coords],
        )
        for site in structure
    )
    payload = {
        "lattice": [[round(float(x), 4) for x in row] for row in structure.lattice.matrix],
        "sites": sites,
        "settings": settings.defining(),
        "bvlain": version("bvlain"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def precheck(structure: Structure, settings: BVSESettings) -> None:
    """Failures decided without the calculation (raises :class:`OracleFailure`)."""
    if settings.element not in {el.symbol for el in structure.composition.elements}:
        raise OracleFailure("no_mobile_ion", f"{structure.composition.reduced_formula} has no {settings.element}")
    if not structure.is_ordered:
        raise OracleFailure("disordered", "partial occupancies; order the structure first")


def compute_barriers(structure: Structure, settings: BVSESettings) -> dict[str, float]:
    """``{"E_1D", "E_2D", "E_3D"}`` in eV for one structure, in this process (no time limit).

    Raises :class:`OracleFailure` for structures the method cannot handle.
    """
    from bvlain import Lain

    precheck(structure, settings)
    calc = Lain(verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            calc.read_structure(structure.copy(), oxi_check=True)
        except ValueError as err:  # BVAnalyzer: "Valences cannot be assigned!" or an unknown element
            reason = "parameters" if "not in set of BV parameters" in str(err) else "valences"
            raise OracleFailure(reason, str(err)) from None
        try:
            calc.bvse_distribution(mobile_ion=settings.mobile_ion, r_cut=settings.r_cut, resolution=settings.resolution)
        except (KeyError, IndexError) as err:  # no bond-valence parameters for an ion pair
            raise OracleFailure("parameters", f"no bond-valence parameters: {err!r}") from None
        energies = calc.percolation_barriers(encut=settings.encut)
    return {k: float(v) for k, v in energies.items()}


def _evaluate_one(structure_dict: dict, settings_dict: dict) -> dict:
    """Worker entry point: a result dict (module level, so the pool can pickle it)."""
    settings = BVSESettings(**settings_dict)
    structure = Structure.from_dict(structure_dict)
    start = time.perf_counter()
    try:
        e = compute_barriers(structure, settings)
        out = {"ok": True, "e_1d": e["E_1D"], "e_2d": e["E_2D"], "e_3d": e["E_3D"]}
    except OracleFailure as err:
        out = {"ok": False, "failure": err.reason, "message": err.message}
    except Exception as err:  # noqa: BLE001 - any other failure of outside code is recorded
        out = {"ok": False, "failure": "error", "message": f"{type(err).__name__}: {err}"[:500]}
    out["seconds"] = time.perf_counter() - start
    return out


class BVSEOracle:
    """BVSE barriers for many structures: parallel, time-limited, cached on disk.

    Args:
        cache_dir: folder of one JSON file per evaluated structure (created if missing).
        settings: method settings and the per-structure time limit.
        workers: worker processes.
    """

    def __init__(self, cache_dir: str | Path, settings: BVSESettings | None = None, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        self.cache_dir = Path(cache_dir)
        self.settings = settings or BVSESettings()
        self.workers = workers

    # -- cache
    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def cached(self, key: str) -> OracleResult | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            res = OracleResult.from_json(path.read_text())
        except (ValueError, TypeError) as err:  # a damaged entry is recomputed, not trusted
            log.warning("ignoring unreadable cache entry %s (%s)", path, err)
            return None
        if res.failure == "timeout" and (res.time_limit_s or 0) < self.settings.time_limit_s:
            return None  # a larger limit may finish it
        return res

    def _store(self, res: OracleResult) -> None:
        path = self._path(res.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, res.to_json())

    # -- evaluation
    def evaluate(self, structures: Sequence[Structure], label: str = "BVSE", every: int = 50) -> list[OracleResult]:
        """One result per structure, in order; cached results are reused, new ones are cached."""
        keys = [structure_key(s, self.settings) for s in structures]
        results: list[OracleResult | None] = [self.cached(k) for k in keys]
        todo: dict[str, list[int]] = {}  # key -> positions (duplicates are computed once)
        for i, (k, r) in enumerate(zip(keys, results, strict=True)):
            if r is None:
                try:
                    precheck(structures[i], self.settings)
                except OracleFailure as err:
                    results[i] = OracleResult(k, False, failure=err.reason, message=err.message)
                    self._store(results[i])
                    continue
                todo.setdefault(k, []).append(i)
        n_cached = sum(r is not None and r.cached for r in results)
        log.info("%s: %d structures, %d cached, %d to compute with %d workers", label, len(keys), n_cached,
                 len(todo), self.workers)
        if todo:
            self._run(structures, todo, results, label, every)
        return results  # type: ignore[return-value]

    def _run(self, structures, todo, results, label, every) -> None:
        from pebble import ProcessPool

        limit = self.settings.time_limit_s
        settings_dict = asdict(self.settings)
        done = 0
        start = time.perf_counter()
        with ProcessPool(max_workers=self.workers, context=mp.get_context("spawn")) as pool:
            futures = {
                key: pool.schedule(_evaluate_one, args=(structures[pos[0]].as_dict(), settings_dict), timeout=limit)
                for key, pos in todo.items()
            }
            for key, fut in futures.items():
                try:
                    res = OracleResult(key, **fut.result())
                except FutureTimeout:
                    res = OracleResult(key, False, failure="timeout", message=f"over {limit:g} s",
                                       seconds=limit, time_limit_s=limit)
                except Exception as err:  # noqa: BLE001 - a worker that died (memory, signal) is a recorded failure
                    res = OracleResult(key, False, failure="error", message=f"worker failed: {type(err).__name__}: {err}"[:500])
                self._store(res)
                for i in todo[key]:
                    results[i] = res
                done += 1
                if done % every == 0 or done == len(futures):
                    log.info("%s: %d/%d computed (%.1f s)", label, done, len(futures), time.perf_counter() - start)


def summarize(results: Sequence[OracleResult]) -> dict:
    """Counts of successes and of failures by reason, and the median time of computed ones."""
    reasons = Counter(r.failure for r in results if not r.ok)
    secs = sorted(r.seconds for r in results if r.failure != "timeout" and r.seconds > 0)
    return {
        "n": len(results),
        "ok": sum(r.ok for r in results),
        "failures": dict(reasons),
        "median_seconds": secs[len(secs) // 2] if secs else math.nan,
    }
