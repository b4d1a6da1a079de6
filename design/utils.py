"""Small shared helpers: seeding, device choice, atomic file writes."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (reference counting still frees memory; cycles wait until
    the end): work that creates tens of thousands of objects it keeps (decoded molecules, their graphs)
    otherwise sets off full collections that scan every object of the process."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use device: auto or cpu")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 matrix units (a CPU with AMX or AVX512-BF16, a CUDA GPU with
    bf16 support), where autocast to bf16 runs faster rather than emulated."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def autocast_dtype(precision: str, device: torch.device, supported: bool = True, who: str = "this domain"
                   ) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (None: float32 throughout); ``supported``:
    whether the networks (``who``) train in bf16 at all (auto then keeps float32, bf16 is refused)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if not supported:
            raise ValueError(f"train.precision: bf16 is not supported by {who}; use fp32 or auto")
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if supported and native_bf16(device) else None
    raise ValueError(f"train.precision {precision!r} is not one of fp32, bf16, auto")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash inside the block leaves no half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON text that strict parsers accept: NaN and infinities (undefined rates, empty sets) become
    null instead of the non-standard ``NaN`` / ``Infinity`` tokens ``json.dumps`` writes."""
    import json
    import math

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def ensemble_blob(fmt: str, version: int, config: Any, members: list[torch.nn.Module], **extra: Any) -> dict:
    """What an ensemble file holds: its format tag and version, the (dataclass) config as a dict,
    every member's weights on the CPU, and ``extra`` entries (scalings, info)."""
    return {"format": fmt, "version": version, "config": dataclasses.asdict(config),
            "members": [{k: v.cpu() for k, v in m.state_dict().items()} for m in members], **extra}


def save_torch_file(blob: dict, path: str | Path) -> Path:
    """``torch.save`` a dict of tensors, numbers and strings atomically (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_torch_file(path: str | Path, fmt: str, what: str, hint: str) -> dict:
    """Load a file written by :func:`save_torch_file` without unpickling code (``weights_only``);
    a truncated, tampered or foreign file, or one whose ``format`` is not ``fmt``, is a
    ``ValueError`` that names ``what`` it should be and the ``hint`` to fix it."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated, tampered or not a torch file
        raise ValueError(f"{path} is not a readable {what} file ({err}); {hint}") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise ValueError(f"{path} is not an {fmt} file; {hint}")
    return blob


@contextlib.contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block, so that
    processes sharing a store or database take turns at a step that must not run twice at once.
    ``on_wait`` is called once when another process holds the lock (before waiting for it).
    Systems without ``fcntl`` get no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
