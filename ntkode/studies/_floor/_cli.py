"""`ntkode floor`: why kernel grids hit a floor on ReLU networks, measured on **sine**."""

import argparse
import math
import os

from .._run import add_resume_arguments, resume_option

NAME = "floor"
HELP = (
    "The floor of point-sampled kernel grids on ReLU sine: activation flips, kernel jumps vs "
    "drift, NTK velocity excess, surrogate error vs time and G, a softplus(βx)/β → ReLU sweep, "
    "and mean-Jacobian / mean-kernel / soft-gate remedies against the same truth."
)


def _beta(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"β must be positive (inf for ReLU), got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="floor-out", help="output folder (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a small problem: under a minute")
    p.add_argument("--width", type=int, default=512, help="hidden width (default 512)")
    p.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--dim", type=int, default=8, help="input dimension (default 8)")
    p.add_argument("--t-end", type=float, default=50.0, help="training horizon (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-5, help="reference true-flow rtol")
    p.add_argument("--loose", type=float, default=10.0, help="second truth at LOOSE × rtol")
    p.add_argument("--sample-dt", type=float, default=0.1, help="spacing of saved states")
    p.add_argument(
        "--grid-sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="point-sampled G"
    )
    p.add_argument("--remedy-sizes", type=int, nargs="+", default=None, help="averaged-grid G")
    p.add_argument("--window", type=float, default=0.5, help="averaging half-width (time)")
    p.add_argument(
        "--betas", type=_beta, nargs="+", default=[1.0, 4.0, 16.0, 64.0, math.inf],
        help="sweep of softplus(βx)/β (inf = ReLU)",
    )  # fmt: skip
    p.add_argument(
        "--uncentred", action="store_true", help="sweep softplus(βx)/β without the −log2/β shift"
    )
    p.add_argument(
        "--soft-betas", type=_beta, nargs="+", default=[64.0, 256.0],
        help="β of the soft-gated kernels at the ReLU weights",
    )  # fmt: skip
    add_resume_arguments(p)


def run(args) -> int:
    from ._study import floor_study

    result = floor_study(
        width=args.width,
        depth=args.depth,
        n_train=args.n_train,
        n_test=args.n_test,
        dim=args.dim,
        t_end=args.t_end,
        seed=args.seed,
        rtol=args.rtol,
        loose=args.loose,
        sample_dt=args.sample_dt,
        grid_sizes=tuple(args.grid_sizes),
        remedy_sizes=None if args.remedy_sizes is None else tuple(args.remedy_sizes),
        window=args.window,
        betas=tuple(args.betas),
        centred=not args.uncentred,
        soft_betas=tuple(args.soft_betas),
        quick=args.quick,
        out=args.out,
        resume=resume_option(args),
        log=lambda s: print(s, flush=True),
    )
    print()
    for sentence in result["summary"]:
        print("- " + sentence)
    print(
        f"\n{result['seconds']['total']:.0f} s in all (load average "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])}); wrote "
        f"{os.path.join(args.out, 'results.json')} and {len(result.get('figures', []))} figures"
    )
    solved = [result["truth"]["reference"]["success"], result["truth"]["loose"]["success"]]
    solved += [row["success"] for row in result["sweep"].values()]
    return 0 if all(solved) else 1
