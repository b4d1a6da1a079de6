"""Ablation studies: one base run config, named variants of it, each trained and benchmarked.

An ablation spec is a YAML file (see ``configs/ablations/crystal.yaml``)::

    base: crystal.yaml              # a run config, relative to the spec file
    set: {train: {epochs: 12}}      # overrides applied to every variant (optional)
    bench: {n: 2000, seed: 0}       # benchmark settings (design.benchmark)
    variants:                       # name -> overrides of the base config
      vae_only: {train: {adv_weight: 0.0}}
      non_saturating: {}

Each variant's config is the base merged with ``set`` and then its own overrides, validated like
any run config. Results are written one JSON file per variant, so an interrupted study resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from design.config import ConfigError, RunConfig, load_config, merge
from design.tracking.store import flatten

# columns of the ablation table: (metric key, header, format)
COLUMNS: list[tuple[str, str, str]] = [
    ("structural_validity", "struct", "{:.3f}"),
    ("compositional_validity", "comp", "{:.3f}"),
    ("validity", "valid", "{:.3f}"),
    ("cov_recall", "COV-R", "{:.3f}"),
    ("cov_precision", "COV-P", "{:.3f}"),
    ("w1_density", "W1 dens", "{:.3f}"),
    ("w1_n_elements", "W1 #el", "{:.3f}"),
    ("uniqueness", "uniq", "{:.3f}"),
    ("novelty", "novel", "{:.3f}"),
    ("train_wall_min", "train min", "{:.1f}"),
    ("train_cpu_min", "train CPU min", "{:.1f}"),
]


class BenchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(2000, ge=2)
    seed: int = 0
    w1_samples: int = Field(1000, ge=1)
    cov_samples: int | None = Field(None, ge=1)
    reference: str | None = Field(None, description="reference split; default: each config's data.reference")


class AblationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    set: dict[str, Any] = Field(default_factory=dict)
    bench: BenchSettings = BenchSettings()
    variants: dict[str, dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True)
class Study:
    """A loaded ablation spec: its settings, the base config's name, each variant's validated config."""

    spec: AblationSpec
    base_name: str
    configs: dict[str, RunConfig]


def load_spec(path: str | Path) -> Study:
    """Read an ablation spec and validate the config of every variant."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation spec {path} does not exist; see configs/ablations/crystal.yaml")
    try:
        spec = AblationSpec.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid ablation spec {path}: {problems}") from None
    base = (path.parent / spec.base).resolve()
    base_name = load_config(base, spec.set).name
    configs = {}
    for name, overrides in spec.variants.items():
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"ablation variant name {name!r} must be letters, digits, '-' or '_'")
        configs[name] = load_config(base, merge(merge(spec.set, overrides or {}), {"name": f"{base_name}-{name}"}))
    return Study(spec, base_name, configs)


def select_variants(study: Study, names: list[str] | None) -> list[str]:
    """The variants to run: all of the study's, or the named ones (spec order kept).

    Splitting a study into disjoint selections lets several processes or machines share it; each
    writes its variants' results into the same folder and the table collects whatever is finished.
    """
    if not names:
        return list(study.configs)
    unknown = [n for n in names if n not in study.configs]
    if unknown:
        raise ConfigError(f"unknown ablation variant(s) {', '.join(map(repr, unknown))}; "
                          f"the spec defines {', '.join(study.configs)}")
    return [n for n in study.configs if n in names]


def result_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.json"


def read_results(out_dir: str | Path, names: list[str]) -> dict[str, dict]:
    """Finished variants' benchmark results (missing ones are left out)."""
    out = {}
    for name in names:
        p = result_path(out_dir, name)
        if p.is_file():
            out[name] = json.loads(p.read_text())
    return out


def format_markdown(results: dict[str, dict], overrides: dict[str, dict]) -> str:
    """A markdown table, one row per variant, with its overrides spelled out."""
    head = "| variant | overrides | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "---|" * (len(COLUMNS) + 2)
    rows = [head, sep]
    for name, m in results.items():
        shown = ", ".join(f"{k}={v}" for k, v in flatten(overrides.get(name) or {}).items()) or "(base)"
        cells = []
        for key, _, fmt in COLUMNS:
            v = m.get(key)
            cells.append(fmt.format(v) if isinstance(v, (int, float)) else "-")
        rows.append(f"| {name} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(rows)

