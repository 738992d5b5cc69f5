"""`ntkode mkl`: the gated-ReLU NTK against optimal multiple kernel learning."""

import argparse
import sys

NAME = "mkl"
HELP = (
    "Gated-ReLU NTK vs optimal MKL kernel (iterative reweighting) vs trained gated-ReLU "
    "network on scikit-learn's bundled data sets."
)
_ALL = ("breast_cancer", "wine", "iris", "diabetes", "digits")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/mkl", help="output directory (JSON, PNG)")
    parser.add_argument("--quick", action="store_true", help="small settings (< 1 minute)")
    parser.add_argument(
        "--datasets", nargs="+", default=list(_ALL), choices=_ALL, metavar="NAME",
        help=f"data sets to run (default: all of {', '.join(_ALL)})",
    )  # fmt: skip
    parser.add_argument("--gates", type=int, default=None, help="number of sampled gates")
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import jax

    # Reweighting certifies optimality with a duality gap: float64 keeps it meaningful.
    jax.config.update("jax_enable_x64", True)
    from ._study import format_table, mkl_study

    kwargs = {}
    if args.gates is not None:
        kwargs["num_gates"] = args.gates
    if args.folds is not None:
        kwargs["folds"] = args.folds
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)
    results = mkl_study(
        args.datasets, quick=args.quick, out=args.out, seed=args.seed, progress=progress,
        **kwargs,
    )  # fmt: skip
    print(format_table(results))
    print(f"\nwrote {args.out}/results.json and {args.out}/mkl.png")
    return 0
