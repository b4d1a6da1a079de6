"""Figures of a closed-loop campaign, written as PNG files under ``<campaign>/plots/``.

* ``predicted_vs_verified.png``: the surrogate's prediction (made before the oracle ran) against
  the oracle's value for every verified candidate, per round and for the final report;
* ``barrier_distribution.png``: the oracle values of the verified top candidates and of the random
  baseline, the last surrogate's predictions for all ranked candidates, and the oracle values of the
  labelled training structures, with the hit threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from design.config import RunConfig
from design.generation.loop import round_dir
from design.generation.tables import read_table


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def closed_loop_figures(cfg: RunConfig, out_dir: Path, threshold: float) -> list[Path]:
    """Write the campaign's figures; return their paths."""
    from property_models.campaign import split_labels
    from property_models.labels import oracle_cap

    plt = _pyplot()
    out_dir = Path(out_dir)
    target, col = cfg.surrogate.target, cfg.surrogate.column
    cap = oracle_cap(cfg.surrogate.labels)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(5.5, 5))
    sets = [(f"round {k}", round_dir(out_dir, k) / "verified.csv.gz") for k in range(cfg.generate.rounds)]
    sets.append(("final top", out_dir / "enrichment_top.csv"))
    for name, path in sets:
        if path.is_file():
            t = read_table(path)
            ok = t["oracle_ok"].astype(bool)
            ax.scatter(t.loc[ok, col], t.loc[ok, f"ver_{target}"].astype(float).clip(upper=cap), s=14, label=name)
    ax.plot([0, cap], [0, cap], color="grey", lw=0.8)
    ax.axhline(threshold, color="red", lw=0.8, ls="--", label=f"hit threshold {threshold:.2f} eV")
    ax.set_xlabel(f"surrogate {target} (eV)")
    ax.set_ylabel(f"oracle {target} (eV, censored at {cap:g})")
    ax.legend(fontsize=7)
    paths.append(_save(fig, plot_dir / "predicted_vs_verified.png", plt))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    train = split_labels(cfg.surrogate.labels, cfg.data.train, target)[target]
    bins = np.linspace(0, cap, 26)
    ax.hist(train, bins=bins, density=True, alpha=0.4, label=f"training structures (n={len(train)})")
    ranked = read_table(out_dir / "ranked.csv")
    if col in ranked:
        ax.hist(ranked[col], bins=bins, density=True, histtype="step", lw=1.5,
                label=f"candidates, predicted (n={len(ranked)})")
    for name in ("top", "baseline"):
        path = out_dir / f"enrichment_{name}.csv"
        if path.is_file():
            t = read_table(path)
            v = t[f"ver_{target}"].astype(float).clip(upper=cap).dropna()
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.5, label=f"{name}, verified (n={len(v)})")
    ax.axvline(threshold, color="red", lw=0.8, ls="--")
    ax.set_xlabel(f"{target} (eV)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    paths.append(_save(fig, plot_dir / "barrier_distribution.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    from design.utils import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
