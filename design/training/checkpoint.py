"""Generator checkpoints: weights, resolved config, data statistics and history saved together.

Files are plain ``torch.save`` dicts of tensors, numbers, strings, lists and dicts, so they load
with ``torch.load(weights_only=True)``: nothing in a checkpoint can execute code when loaded.
Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from design.config import RunConfig, config_from_dict
from design.utils import atomic_path

FORMAT = "invdes-generator"
VERSION = 1
REQUIRED = ("format", "version", "config", "state", "property_mean", "property_std", "condition_bank", "latent_prior", "model", "epoch", "complete")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, truncated, tampered, or of another format)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    blob = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train one with `invdes train --config ...` "
            "or pass a models:/ URI"
        )
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({type(err).__name__}: {str(err)[:200]}); "
            "the file is truncated, tampered with or not an invdes checkpoint. Retrain or restore it"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an invdes generator checkpoint (format tag missing)")
    missing = [k for k in REQUIRED if k not in blob]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is incomplete. Retrain or restore it")
    if blob["version"] > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {blob['version']}, newer than this code ({VERSION}); "
            "upgrade invdes"
        )
    return blob


def checkpoint_config(blob: dict[str, Any]) -> RunConfig:
    return config_from_dict(blob["config"], source="checkpoint")
