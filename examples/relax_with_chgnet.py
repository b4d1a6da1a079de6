"""Downstream use of the generator API: generate crystals and relax them with CHGNet through ASE.

    python examples/relax_with_chgnet.py --model models:/crystal-generator@champion --n 3 --steps 50

The generator comes from the MLflow registry (set MLFLOW_TRACKING_URI if the store is not
./mlflow.db) or from a checkpoint path. CHGNet's pretrained weights ship inside its wheel, so this
runs offline. Prints each structure's CHGNet energy per atom before and after relaxation.
"""

from __future__ import annotations

import argparse
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/crystal-generator@champion")
    parser.add_argument("--n", type=int, default=3, help="how many valid structures to relax")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="FIRE steps per structure")
    parser.add_argument("--fmax", type=float, default=0.1, help="force convergence, eV/A")
    args = parser.parse_args(argv)

    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    from design import load_generator

    warnings.filterwarnings("ignore")
    generator = load_generator(args.model)
    candidates = generator.generate(args.n, seed=args.seed, valid_only=True)
    calc = CHGNetCalculator(model=CHGNet.load(verbose=False), use_device="cpu")
    for cand in candidates:
        atoms = cand.to_ase()
        atoms.calc = calc
        e0 = atoms.get_potential_energy() / len(atoms)
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged = opt.run(fmax=args.fmax, steps=args.steps)
        e1 = atoms.get_potential_energy() / len(atoms)
        print(
            f"{cand.id} {cand.structure.composition.reduced_formula:>12s}  energy per atom "
            f"{e0:8.3f} -> {e1:8.3f} eV after {opt.nsteps} steps (converged: {converged}); "
            f"predicted formation energy {cand.scores.get('pred_formation_energy_per_atom', float('nan')):.3f} eV/atom"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
