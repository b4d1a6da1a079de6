"""``invdes``: the command line. Thin: it parses arguments, sets up logging and calls flows or the API.

    invdes discover --config configs/crystal.yaml [--out DIR] [--set train.epochs=5 ...]
    invdes train    --config configs/crystal.yaml [--force] [--set ...]
    invdes generate --model models:/crystal-generator@champion --n 100 --seed 0 --out DIR
                    [--target formation_energy_per_atom=-2.0] [--valid-only]
    invdes bench crystal --model models:/crystal-generator@champion --n 10000 --json bench.json
    invdes bench molecule --model models:/molecule-generator@champion --n 30000 --json bench.json
    invdes ablate --spec configs/ablations/crystal.yaml --out runs/ablation
    invdes label bvse --out data/labels/bvse_li.csv.gz [--workers 2] [--time-limit 60]
    invdes surrogate --labels data/labels/bvse_li.csv.gz --out runs/surrogate/bvse.pt --json metrics.json
    invdes conductivity --folds 5 [--group-by family] --json obelix_cv.json
    invdes activity --target gsk3 [--members 5] [--epochs 30] [--out runs/activity/gsk3.pt] [--json metrics.json]
    invdes robust crystal --pool runs/electrolyte --out runs/robust/crystal [--labels ...] [--epsilon 0.05]
    invdes robust molecule --target gsk3 --pool runs/molecule --out runs/robust/gsk3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from design.config import ConfigError, RunConfig, load_config
from flows.prefect_api import STARTUP_TIMEOUT_S


def _overrides(pairs: list[str]) -> dict:
    """``a.b=value`` strings -> nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} is not KEY=VALUE; write e.g. --set train.epochs=5")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _config(args) -> RunConfig:
    return load_config(args.config, _overrides(args.set or []))


def _targets(pairs: list[str] | None) -> dict[str, float] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--target {pair!r} must be PROPERTY=NUMBER, e.g. formation_energy_per_atom=-2.0") from None
    return out


def _start_prefect() -> None:
    """Start this process's Prefect API (safely beside other campaigns) once the arguments are known
    to be good, just before the first flow call."""
    from flows.prefect_api import start_local_api

    start_local_api()


def cmd_discover(args) -> int:
    from flows.discover import discover

    config = _config(args)
    _start_prefect()
    summary = discover(config.model_dump(mode="json"), args.out)
    final = summary["rounds"][-1]
    print(json.dumps({k: summary[k] for k in ("run_id", "out_dir", "model_uri", "model_version", "ranked", "wall_s")}, indent=2))
    print(
        f"final round: generated {final['generated']}, structural validity {final['structural_validity']:.3f}, "
        f"compositional validity {final['compositional_validity']:.3f}, uniqueness {final['uniqueness']:.3f}, "
        f"novelty {final['novelty']:.3f}"
    )
    return 0


def cmd_train(args) -> int:
    from flows.train import train_generator

    config = _config(args)
    _start_prefect()
    path = train_generator(config.model_dump(mode="json"), force=args.force)
    print(path)
    return 0


def cmd_generate(args) -> int:
    from design.api import load_generator
    from design.generation.tables import to_table, write_table

    gen = load_generator(args.model)
    cands = gen.generate(args.n, seed=args.seed, target=_targets(args.target), valid_only=args.valid_only)
    out = Path(args.out)
    paths = gen.domain.write(cands, out / "structures")
    table = to_table(cands, gen.domain, text=False)
    table["file"] = [str(p.relative_to(out)) for p in paths]
    write_table(table, out / "candidates.csv")
    valid = sum(c.valid for c in cands)
    print(f"wrote {len(cands)} candidates ({valid} valid) to {out / 'candidates.csv'} and {out / 'structures'}/")
    return 0


def cmd_bench(args) -> int:
    if args.n < 2:
        raise ValueError(f"--n must be at least 2, got {args.n}")
    run = _bench_molecule if args.domain == "molecule" else _bench_crystal
    table = run(args)
    print(table)
    if args.json:
        print(f"\nJSON written to {args.json}")
    return 0


def _generate_settings(args) -> dict:
    """The bench's ``generate`` overrides: ``--set generate.KEY=VALUE`` plus --temperature / --unconstrained."""
    sections = _overrides(args.set or [])
    other = sorted(set(sections) - {"generate"})
    if other:
        raise ConfigError(f"bench --set takes generate.* keys only (sampling settings), got section(s) {other}; "
                          "the other sections are fixed by the trained model")
    settings = dict(sections.get("generate", {}))
    if args.temperature is not None:
        settings["temperature"] = args.temperature
    if args.constrained is not None:
        settings["constrained_decoding"] = args.constrained
    return settings


def _bench_crystal(args) -> str:
    from design.benchmark import format_table

    settings = _generate_settings(args)
    if args.track:
        from flows.bench import benchmark

        _start_prefect()
        metrics = benchmark(args.model, args.n, args.seed, args.reference, args.json, args.w1_samples,
                            args.cov_samples, settings)
    else:
        from design.api import load_generator
        from design.benchmark import run_crystal_benchmark, write_json

        metrics = run_crystal_benchmark(load_generator(args.model, generate=settings), args.n, args.seed,
                                        args.reference, args.w1_samples, args.cov_samples)
        if args.json:
            write_json(metrics, args.json)
    return format_table(metrics)


def _bench_molecule(args) -> str:
    from design.benchmark_molecule import format_table

    settings = _generate_settings(args)
    options = {"train": args.novelty_train, "fcd_samples": args.fcd_samples, "fcd_reference": args.fcd_reference,
               "snn_samples": args.snn_samples, "intdiv_samples": args.intdiv_samples,
               "elbo_samples": args.elbo_samples}
    if args.track:
        from flows.bench import molecule_benchmark

        _start_prefect()
        metrics = molecule_benchmark(args.model, args.n, args.seed, args.reference, args.json, options, settings)
    else:
        from design.api import load_generator
        from design.benchmark_molecule import run_molecule_benchmark, write_json

        metrics = run_molecule_benchmark(load_generator(args.model, generate=settings), args.n, args.seed, args.reference,
                                         **options)
        if args.json:
            write_json(metrics, args.json)
    return format_table(metrics)


def cmd_ablate(args) -> int:
    from design.ablation import load_spec, select_variants
    from flows.ablation import ablation

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    select_variants(load_spec(args.spec), variants)  # fail on a bad spec or name before Prefect starts
    _start_prefect()
    result = ablation(args.spec, args.out, variants=variants)
    print(result["table"])
    print(f"\ntable written to {Path(args.out) / 'ablation.md'}")
    return 0


def cmd_label(args) -> int:
    from flows.labels import run

    settings = {"time_limit_s": args.time_limit, "resolution": args.resolution, "encut": args.encut}
    _start_prefect()
    prov = run(args.out, args.workers, sources=args.source, settings=settings, max_sites=args.max_sites)
    print(json.dumps(prov["counts"], indent=2))
    print(f"labels written to {args.out} (provenance beside it)")
    return 0


def cmd_surrogate(args) -> int:
    from property_models.barriers import train_and_evaluate
    from property_models.surrogate import SurrogateConfig

    cfg = SurrogateConfig(targets=args.target or ["e_3d"], members=args.members, epochs=args.epochs, seed=args.seed,
                          cutoff=args.cutoff, descriptors=args.descriptors, log_target=args.log_target,
                          element_features=args.element_features, val_fraction=args.val_fraction,
                          forest_weight=args.forest_weight)
    _, result = train_and_evaluate(args.labels, cfg, args.test_fraction, args.out, splits=args.splits)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(f"ensemble written to {args.out}")
    return 0


def cmd_conductivity(args) -> int:
    from property_models.conductivity import cross_validate, load_obelix

    result = cross_validate(load_obelix(), args.folds, args.seed, args.trees, args.group_by)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


def cmd_activity(args) -> int:
    from property_models.activity import evaluate, format_table

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or f"runs/activity/{args.target}.pt"
    result = evaluate(args.target, args.members, args.epochs, args.seed, args.trees, args.hidden, args.layers,
                      val_fraction=args.val_fraction, out=out)
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        print(f"metrics written to {args.json}")
    print(f"ensemble written to {out}")
    return 0


def _budgets(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--budgets {text!r} must be comma-separated numbers, e.g. 0,0.02,0.05,0.1") from None
    if not values or values[0] != 0 or values != sorted(values):
        raise ConfigError(f"--budgets {text!r} must start at 0 and increase, e.g. 0,0.02,0.05,0.1")
    return values


def cmd_robust(args) -> int:
    from flows.robustness import robustness_study

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    defaults = {"crystal": (3, 30, "e_3d"), "molecule": (3, 10, None)}[args.domain]
    target = args.target or defaults[2]
    if target is None:
        raise ConfigError("invdes robust molecule needs --target gsk3, jnk3 or bace")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - {"standard", "fgsm", "pgd"})
    if unknown or not variants:
        raise ConfigError(f"--variants {args.variants!r}: choose from standard, fgsm, pgd (comma-separated)")
    options = {"pool": args.pool, "target": target, "members": args.members or defaults[0],
               "epochs": args.epochs or defaults[1], "seed": args.seed, "epsilon": args.epsilon, "steps": args.steps,
               "adv_weight": args.adv_weight, "variants": variants, "budgets": _budgets(args.budgets),
               "attack_steps": args.attack_steps, "top_k": args.top_k, "labels": args.labels,
               "train_split": args.train_split, "hit_quantile": args.hit_quantile, "workers": args.workers,
               "time_limit": args.time_limit, "trees": args.trees, "eval_samples": args.eval_samples,
               "uncertainty_weight": args.uncertainty_weight}
    _start_prefect()
    result = robustness_study(args.domain, options, args.out)
    print(result["table"])
    print(f"\nstudy written to {Path(args.out).resolve()} (MLflow run {result['run_id']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="invdes", description="Adversarial inverse design of crystals and molecules.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="train or reuse a generator, then generate -> filter -> rank; log to MLflow")
    d.add_argument("--config", required=True, help="YAML run config, e.g. configs/crystal.yaml")
    d.add_argument("--out", help="campaign directory (default: <output.dir>/<name>); reruns resume here")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    d.set_defaults(func=cmd_discover)

    t = sub.add_parser("train", help="train the generator of a config (reused if already trained)")
    t.add_argument("--config", required=True)
    t.add_argument("--force", action="store_true", help="retrain even if a matching generator exists")
    t.add_argument("--set", action="append", metavar="KEY=VALUE")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="sample candidates from a trained generator")
    g.add_argument("--model", required=True, help="models:/crystal-generator@champion, runs:/..., or a checkpoint path")
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--target", action="append", metavar="PROPERTY=VALUE", help="condition on a property value")
    g.add_argument("--valid-only", action="store_true", help="sample until N candidates pass the exact checks")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="benchmark a trained generator (CDVAE or MOSES protocol metrics, throughput)")
    b.add_argument("domain", choices=["crystal", "molecule"], help="which benchmark")
    b.add_argument("--model", required=True, help="models:/crystal-generator@champion, runs:/..., or a checkpoint path")
    b.add_argument("--n", type=int, default=10_000, help="samples to generate (default 10000; MOSES uses 30000)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", help="write the metrics as JSON here")
    b.add_argument("--reference", help="reference split (default: the generator's data.reference, the MP-20 test split)")
    b.add_argument("--w1-samples", type=int, default=1000, help="crystal: valid samples for the Wasserstein distances")
    b.add_argument("--cov-samples", type=int, help="crystal: cap on valid samples fingerprinted for COV (default: all)")
    b.add_argument("--temperature", type=float, help="sampling temperature (default: the generator's)")
    b.add_argument("--unconstrained", dest="constrained", action="store_const", const=False,
                   help="crystal: raw samples, switch off the generator's constrained decoding")
    b.add_argument("--set", action="append", metavar="generate.KEY=VALUE",
                   help="override a sampling setting, e.g. --set generate.latent_prior=mixture")
    b.add_argument("--novelty-train", default="molecules/moses/train.csv.gz",
                   help="molecule: the split novelty is judged against (default: the whole MOSES train)")
    b.add_argument("--fcd-samples", type=int, default=10_000, help="molecule: valid samples for FCD")
    b.add_argument("--fcd-reference", type=int, default=10_000, help="molecule: reference molecules for FCD")
    b.add_argument("--snn-samples", type=int, default=5_000, help="molecule: valid samples for SNN (all reference)")
    b.add_argument("--intdiv-samples", type=int, default=10_000, help="molecule: valid samples for IntDiv")
    b.add_argument("--elbo-samples", type=int, default=5_000,
                   help="molecule: reference molecules for the held-out likelihood bound (NLL_bound/Test)")
    b.add_argument("--no-track", dest="track", action="store_false", help="do not run as a flow / log to MLflow")
    b.set_defaults(func=cmd_bench)

    a = sub.add_parser("ablate", help="train and benchmark every variant of an ablation spec; print the table")
    a.add_argument("--spec", required=True, help="ablation spec, e.g. configs/ablations/crystal.yaml")
    a.add_argument("--out", default="runs/ablation", help="results folder; a rerun skips finished variants")
    a.add_argument("--variants", help="comma-separated subset of the spec's variants (e.g. to split a study "
                   "between processes sharing --out); default: all")
    a.set_defaults(func=cmd_ablate)

    lab = sub.add_parser("label", help="physics-oracle labels for dataset structures (cached, resumable)")
    lab.add_argument("oracle", choices=["bvse"], help="BVSE Li+ migration barriers (bvlain)")
    lab.add_argument("--out", default="data/labels/bvse_li.csv.gz", help="labels table (CSV; provenance beside it)")
    lab.add_argument("--source", action="append", help="dataset file under the data root (default: all crystal "
                     "splits and the OBELiX CIFs); repeat for several")
    lab.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="structures computed at once")
    lab.add_argument("--time-limit", type=float, default=60.0, help="seconds per structure (default 60)")
    lab.add_argument("--resolution", type=float, default=0.2, help="grid spacing in Angstrom (default 0.2)")
    lab.add_argument("--encut", type=float, default=5.0, help="barriers above this many eV count as infinite")
    lab.add_argument("--max-sites", type=int, default=20, help="largest cell taken from the CSV splits")
    lab.set_defaults(func=cmd_label)

    sg = sub.add_parser("surrogate", help="train the barrier surrogate ensemble on oracle labels; held-out metrics")
    sg.add_argument("--labels", default="data/labels/bvse_li.csv.gz", help="table from `invdes label bvse`")
    sg.add_argument("--out", default="runs/surrogate/bvse.pt", help="where the ensemble is saved")
    sg.add_argument("--json", help="write the metrics here too")
    sg.add_argument("--target", action="append", help="label column (default e_3d); repeat for several")
    sg.add_argument("--members", type=int, default=5)
    sg.add_argument("--epochs", type=int, default=30)
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--test-fraction", type=float, default=0.2, help="formulas held out for the metrics")
    sg.add_argument("--splits", type=int, default=1, help="repeat the held-out split with this many seeds")
    sg.add_argument("--cutoff", type=float, default=4.0, help="graph radius, Angstrom")
    sg.add_argument("--element-features", action=argparse.BooleanOptionalAction, default=True,
                    help="node features from physical element properties (plus a learnt per-element part)")
    sg.add_argument("--descriptors", action=argparse.BooleanOptionalAction, default=True,
                    help="feed the Li-environment descriptors to the readout")
    sg.add_argument("--log-target", action=argparse.BooleanOptionalAction, default=True,
                    help="learn the logarithm of the barrier")
    sg.add_argument("--forest-weight", type=float, default=0.0,
                    help="blend in a random forest on the descriptors with this weight (geometric, log target)")
    sg.add_argument("--val-fraction", type=float, default=0.0,
                    help="inner validation split for early stopping (0: train --epochs epochs on all)")
    sg.set_defaults(func=cmd_surrogate)

    cd = sub.add_parser("conductivity", help="OBELiX measured log10 conductivity from composition: grouped K-fold CV")
    cd.add_argument("--folds", type=int, default=5)
    cd.add_argument("--group-by", choices=["composition", "family"], default="composition",
                    help="what a fold holds out whole (default: reduced composition)")
    cd.add_argument("--trees", type=int, default=300)
    cd.add_argument("--seed", type=int, default=0)
    cd.add_argument("--json", help="write the metrics here too")
    cd.set_defaults(func=cmd_conductivity)

    ac = sub.add_parser("activity", help="enzyme-inhibitor activity: GNN ensemble vs Morgan random forest, scaffold split")
    ac.add_argument("--target", required=True, help="gsk3, jnk3 (classification) or bace (pIC50 regression)")
    ac.add_argument("--members", type=int, default=5, help="ensemble members (default 5)")
    ac.add_argument("--epochs", type=int, default=30, help="fixed epochs per member (default 30)")
    ac.add_argument("--hidden", type=int, default=64)
    ac.add_argument("--layers", type=int, default=3)
    ac.add_argument("--trees", type=int, default=500, help="random-forest baseline trees (default 500)")
    ac.add_argument("--val-fraction", type=float, default=0.0,
                    help="scaffold validation part of train whose loss is recorded per epoch (default none)")
    ac.add_argument("--seed", type=int, default=0)
    ac.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ac.add_argument("--out", help="where the ensemble is saved (default runs/activity/<target>.pt)")
    ac.add_argument("--json", help="write the metrics here too")
    ac.set_defaults(func=cmd_activity)

    rb = sub.add_parser("robust", help="standard vs FGSM/PGD-trained property models: robustness curves and the "
                        "exploitation gap on a campaign's candidates")
    rb.add_argument("domain", choices=["crystal", "molecule"],
                    help="crystal: BVSE-barrier surrogate judged by the oracle; molecule: activity GNN judged by a "
                    "Morgan random forest")
    rb.add_argument("--pool", help="campaign folder (its rounds' accepted candidates) or candidate table; without "
                    "it only the robustness part runs")
    rb.add_argument("--out", required=True, help="study folder; a rerun reuses what is there")
    rb.add_argument("--target", help="molecule: gsk3, jnk3 or bace; crystal: label column (default e_3d)")
    rb.add_argument("--members", type=int, help="ensemble members (default 3)")
    rb.add_argument("--epochs", type=int, help="epochs per member (default 30 crystal, 10 molecule)")
    rb.add_argument("--epsilon", type=float, default=0.05,
                    help="training budget: Angstrom (crystal) or feature units (molecule); default 0.05")
    rb.add_argument("--steps", type=int, default=3, help="PGD steps in training (default 3)")
    rb.add_argument("--adv-weight", type=float, default=0.5, help="adversarial share of the training loss")
    rb.add_argument("--variants", default="standard,fgsm,pgd", help="which variants (default all three)")
    rb.add_argument("--budgets", default="0,0.02,0.05,0.1,0.2", help="attack budgets of the robustness curve")
    rb.add_argument("--attack-steps", type=int, default=10, help="PGD steps of the evaluation attacks (default 10)")
    rb.add_argument("--top-k", type=int, default=50, help="candidates judged per variant (default 50)")
    rb.add_argument("--uncertainty-weight", type=float, default=0.0,
                    help="rank on the prediction made worse by this many ensemble spreads (the loop uses 1; default 0)")
    rb.add_argument("--seed", type=int, default=0)
    rb.add_argument("--labels", default="data/labels/bvse_li.csv.gz", help="crystal: oracle labels table")
    rb.add_argument("--train-split", default="crystals/mp_20_biternary/val.csv.gz",
                    help="crystal: the generator's training split (its labelled crystals set the hit threshold)")
    rb.add_argument("--hit-quantile", type=float, default=0.1, help="crystal: hit = barrier below this quantile")
    rb.add_argument("--workers", type=int, default=2, help="crystal: oracle worker processes")
    rb.add_argument("--time-limit", type=float, default=60.0, help="crystal: oracle seconds per structure")
    rb.add_argument("--trees", type=int, default=300, help="molecule: trees of the random-forest judge")
    rb.add_argument("--eval-samples", type=int, help="molecule: attack a seeded subset of the test split this large")
    rb.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    rb.set_defaults(func=cmd_robust)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the local Prefect server otherwise tries to reach its telemetry service at every start
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # before any Prefect import: its settings are read once, and a first start (creating and
    # migrating the database) on a busy 2-core machine takes longer than Prefect's 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S)
    # spglib prints a C-level line for every cell it cannot standardise (we fall back quietly)
    os.environ.setdefault("SPGLIB_WARNING", "OFF")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("urllib3", "matplotlib", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"invdes: error: {err}\n(run with -v for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
