"""`ntkode mkl`: the gated-ReLU NTK against optimal multiple kernel learning."""

import argparse
import sys

from .._run import add_resume_arguments, machine_line, resume_option

NAME = "mkl"
HELP = (
    "Gated-ReLU NTK vs optimal MKL kernel (iterative reweighting) vs trained gated-ReLU "
    "network on scikit-learn's bundled data sets."
)
_ALL = ("breast_cancer", "wine", "iris", "diabetes", "digits")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/mkl", help="output directory (JSON, PNG)")
    parser.add_argument(
        "--quick", action="store_true", help="small settings (< 1 minute; explicit options win)"
    )
    parser.add_argument(
        "--datasets", nargs="+", default=None, choices=_ALL, metavar="NAME",
        help=f"data sets to run (default: all of {', '.join(_ALL)}; --quick: iris wine)",
    )  # fmt: skip
    parser.add_argument("--gates", type=int, default=None, help="number of sampled gates")
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds")
    parser.add_argument("--seed", type=int, default=0)
    add_resume_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import jax

    if args.folds is not None and args.folds < 2:
        raise SystemExit(
            "ntkode mkl: --folds must be at least 2 (cross-validation holds one fold out)."
        )
    if args.gates is not None and args.gates < 1:
        raise SystemExit("ntkode mkl: --gates must be at least 1.")
    # Reweighting certifies optimality with a duality gap: float64 keeps it meaningful.
    jax.config.update("jax_enable_x64", True)
    from ._study import format_table, mkl_study

    kwargs = {}
    if args.gates is not None:
        kwargs["num_gates"] = args.gates
    if args.folds is not None:
        kwargs["folds"] = args.folds
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)
    progress(machine_line())
    results = mkl_study(
        args.datasets, quick=args.quick, out=args.out, seed=args.seed, progress=progress,
        resume=resume_option(args), **kwargs,
    )  # fmt: skip
    print(format_table(results))
    print(f"\nwrote {args.out}/results.json and {args.out}/mkl.png")
    return 0
