"""`ntkode widths`: finite networks against their infinite-width limit, on **sine**."""

import argparse
import os
import time

import jax.numpy as jnp

NAME = "widths"
HELP = (
    "Width study on sine: empirical vs analytic NTK at init, NTK change over training, "
    "true vs frozen trajectories, network vs kernel test loss; log-log slopes vs width."
)

# A smoke test of the whole pipeline: tiny data, short horizon, loose tolerance.
QUICK = {"widths": [64, 256], "n_train": 32, "n_test": 32, "t_end": 5.0, "rtol": 1e-4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="widths-out", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096]
    )
    parser.add_argument(
        "--parameterizations", nargs="+", default=["ntk", "standard"], choices=["ntk", "standard"]
    )
    parser.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=256)
    parser.add_argument(
        "--t-end",
        type=float,
        default=10.0,
        help="horizon, in units where the stiffest limiting mode has rate 1 (default 10)",
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--rtol", type=float, default=1e-6, help="true-flow tolerance, atol = rtol/100"
    )
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    parser.add_argument(
        "--quick", action="store_true", help="widths 64 and 256, 32 points: well under a minute"
    )


def run(args) -> int:
    from ._study import HEADER, format_table, plot, save_json, width_study

    if args.x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    opts = dict(
        widths=args.widths,
        n_train=args.n_train,
        n_test=args.n_test,
        t_end=args.t_end,
        rtol=args.rtol,
    )
    if args.quick:
        opts.update(QUICK)
    os.makedirs(args.out, exist_ok=True)
    print(HEADER, flush=True)
    start = time.perf_counter()
    result = width_study(
        parameterizations=args.parameterizations,
        depth=args.depth,
        activation=args.activation,
        seeds=args.seeds,
        dtype=jnp.float64 if args.x64 else jnp.float32,
        out=args.out,
        progress=True,
        **opts,
    )
    result["seconds"] = time.perf_counter() - start
    save_json(result, os.path.join(args.out, "results.json"))
    print()
    print(format_table(result))
    figure = os.path.join(args.out, "widths.png")
    plot(result, figure)
    print(f"\n{len(result['runs'])} runs in {result['seconds']:.0f} s; wrote "
          f"{os.path.join(args.out, 'results.json')} and {figure}")  # fmt: skip
    return 0 if all(r["success"] for r in result["runs"]) else 1
