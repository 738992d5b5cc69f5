"""`ntkode widths`: finite networks against their infinite-width limit, on **sine**."""

import argparse
import os

from .._run import add_resume_arguments, explicit, machine_line, resume_option

NAME = "widths"
HELP = (
    "Width study on sine: empirical vs analytic NTK at init, NTK change over training, "
    "true vs frozen trajectories, network vs kernel test loss; log-log slopes vs width."
)

#: The full study's defaults, and the smaller ones of `--quick` (a smoke test of the whole
#: pipeline: tiny data, short horizon, loose tolerance). Options given explicitly win.
FULL = {
    "widths": [64, 128, 256, 512, 1024, 2048, 4096],
    "n_train": 256,
    "n_test": 256,
    "t_end": 10.0,
    "rtol": 1e-6,
}
QUICK = {"widths": [64, 256], "n_train": 32, "n_test": 32, "t_end": 5.0, "rtol": 1e-4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="widths-out", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--widths", type=int, nargs="+", default=None, help="default 64 ... 4096 (--quick: 64 256)"
    )
    parser.add_argument(
        "--parameterizations", nargs="+", default=["ntk", "standard"], choices=["ntk", "standard"]
    )
    parser.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--n-train", type=int, default=None, help="default 256 (--quick: 32)")
    parser.add_argument("--n-test", type=int, default=None, help="default 256 (--quick: 32)")
    parser.add_argument(
        "--t-end",
        type=float,
        default=None,
        help="horizon, in units where the stiffest limiting mode has rate 1 (default 10; "
        "--quick: 5)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="networks per width (default 1)")
    parser.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="true-flow tolerance, atol = rtol/100 (default 1e-6; --quick: 1e-4)",
    )
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="widths 64 and 256, 32 points: well under a minute (explicit options still win)",
    )
    add_resume_arguments(parser)


def run(args) -> int:
    from ._study import HEADER, format_table, plot, width_study

    if args.seeds < 1:
        raise SystemExit("ntkode widths: --seeds must be at least 1 (networks per width).")
    given = explicit(args, FULL)
    opts = {**(QUICK if args.quick else FULL), **given}
    if args.quick and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        print(f"--quick with {flags} as given", flush=True)
    if args.x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    print(f"{machine_line()}\n{HEADER}", flush=True)
    result = width_study(
        parameterizations=args.parameterizations,
        depth=args.depth,
        activation=args.activation,
        seeds=args.seeds,
        dtype=jnp.float64 if args.x64 else jnp.float32,
        out=args.out,
        progress=True,
        resume=resume_option(args),
        log=lambda s: print(s, flush=True),
        **opts,
    )
    print()
    print(format_table(result))
    figure = os.path.join(args.out, "widths.png")
    plot(result, figure)
    seconds = sum(r["seconds"] for r in result["runs"])
    print(f"\n{len(result['runs'])} runs ({seconds:.0f} s of single-shot run time, on "
          f"{machine_line()}); wrote {os.path.join(args.out, 'results.json')} and "
          f"{figure}")  # fmt: skip
    return 0 if all(r["success"] for r in result["runs"]) else 1
