"""`ntkode control`: learning rates designed on the scheduled-NTK surrogate, run on the network."""

import argparse
import os

from ..._core._records import write_json
from .._run import add_resume_arguments, explicit, machine_line, resume_option

NAME = "control"
HELP = (
    "Learning-rate control on sine and digits: policies designed on the scheduled-NTK surrogate "
    "(certified and not) vs the best constant rate, warm-up + cosine, run on the real network."
)

#: The full study's defaults, and the smaller ones of `--quick` (a smoke test of the whole
#: pipeline: a narrow network, one seed, a short horizon), per problem. Digits' kernels are
#: `(10 n)²`, so it has fewer training examples and a narrower network. Options given
#: explicitly win.
FULL = {
    "sine": {
        "seeds": [0, 1, 2],
        "width": 256,
        "n_train": 128,
        "n_test": 128,
        "steps": 400,
        "design_iterations": 40,
        "segment": 50,
    },
    "digits": {
        "seeds": [0, 1, 2],
        "width": 128,
        "n_train": 64,
        "steps": 400,
        "design_iterations": 40,
        "segment": 50,
    },
}
QUICK = {
    "sine": {
        "seeds": [0],
        "width": 64,
        "n_train": 32,
        "n_test": 32,
        "steps": 100,
        "design_iterations": 5,
        "segment": 20,
    },
    "digits": {
        "seeds": [0],
        "width": 32,
        "n_train": 32,
        "steps": 100,
        "design_iterations": 3,
        "segment": 10,
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--problem",
        choices=("sine", "digits", "all"),
        default="all",
        help="sine, digits (an MLP on mean MSE to the one-hot labels), or all (default): "
        "each writes <out>/<problem>/results.json and control.png",
    )
    parser.add_argument(
        "--out", default="control-out", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)"
    )
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="hidden width (default 256 on sine, 128 on digits; --quick: 64, 32)",
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="hidden layers (default 2 on sine, 1 on digits)"
    )
    parser.add_argument("--activation", default="relu", help="default relu")
    parser.add_argument(
        "--n-train", type=int, default=None, help="default 128 on sine, 64 on digits (--quick: 32)"
    )
    parser.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="sine only (digits tests on 360); default 128 (--quick: 32)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="K, steps per run (default 400; --quick: 100)",
    )
    parser.add_argument(
        "--target-ratio",
        type=float,
        default=None,
        help="target train loss as a fraction of the initial one (default 0.1 on sine, "
        "0.01 on digits)",
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=None,
        help="constant rates of the grid search (default 12 log-spaced in [0.02, 1.5] on sine, "
        "[0.05, 4] on digits)",
    )
    parser.add_argument(
        "--design-iterations",
        type=int,
        default=None,
        help="default 40 (--quick: 5 on sine, 3 on digits)",
    )
    parser.add_argument(
        "--segment",
        type=int,
        default=None,
        help="steps between the reference run's kernels (default 50; --quick: 20 on sine, 10 "
        "on digits)",
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="uncertified warm-up steps (default 20)"
    )
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, a narrow network, 32 points, 100 steps (explicit options win)",
    )
    add_resume_arguments(parser)


def run(args) -> int:
    from ._figures import format_table, plot
    from ._study import control_study

    if args.seeds is not None and not args.seeds:
        raise SystemExit("ntkode control: --seeds needs at least one seed.")
    given = explicit(args, FULL["sine"])
    if args.quick and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        print(f"--quick with {flags} as given", flush=True)
    if args.x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    print(machine_line(), flush=True)
    names = ("sine", "digits") if args.problem == "all" else (args.problem,)
    summaries, seconds = {}, 0.0
    for name in names:
        out = os.path.join(args.out, name)
        print(f"\n== {name} ==", flush=True)
        result = control_study(
            problem=name,
            depth=args.depth,
            activation=args.activation,
            target_ratio=args.target_ratio,
            rates=args.rates,
            warmup=args.warmup,
            dtype=jnp.float64 if args.x64 else jnp.float32,
            out=out,
            resume=resume_option(args),
            log=lambda s: print(s, flush=True),
            **{**(QUICK if args.quick else FULL)[name], **given},
        )
        print()
        print(format_table(result))
        figure = os.path.join(out, "control.png")
        plot(result, figure)
        summaries[name] = result["summary"]
        seconds += result["seconds"]
        print(
            f"\n{name}: {result['seconds']:.0f} s; wrote {os.path.join(out, 'results.json')} "
            f"and {figure}"
        )
    write_json(os.path.join(args.out, "results.json"), {"problems": summaries})
    print(
        f"\n{seconds:.0f} s in all on {machine_line()}; the summaries of "
        f"{', '.join(names)} are in {os.path.join(args.out, 'results.json')}"
    )
    return 0
