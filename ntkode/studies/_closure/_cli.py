"""`ntkode closure`: a small CNN vs its three kernel machines on the Jordan-curve task."""

import argparse

NAME = "closure"
HELP = (
    "Train a small CNN on 16×16 Jordan-curve images by gradient descent; compare its "
    "per-pixel IoU with kernel regression by the NTK at init, at the end, and the path kernel."
)

_QUICK = dict(n_train=4, n_test=4, steps=10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="closure-results", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a tiny run (< 1 minute)")
    parser.add_argument("--n-train", type=int, default=16, help="training images")
    parser.add_argument("--n-test", type=int, default=16, help="held-out images")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=150, help="gradient-descent steps")
    parser.add_argument("--lr", type=float, default=0.003, help="learning rate")
    parser.add_argument("--width", type=int, default=4, help="CNN channels")
    parser.add_argument("--nodes", type=int, default=1, help="quadrature nodes per step")
    parser.add_argument("--stride", type=int, default=1, help="integrate one step in STRIDE")
    parser.add_argument("--ridge", type=float, default=1e-6, help="relative ridge")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--float64", action="store_true", help="run in float64")


def run(args: argparse.Namespace) -> int:
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ._study import closure_study

    kwargs = dict(
        n_train=args.n_train,
        n_test=args.n_test,
        size=args.size,
        steps=args.steps,
        learning_rate=args.lr,
        width=args.width,
        nodes=args.nodes,
        stride=args.stride,
        ridge=args.ridge,
        seed=args.seed,
        out=args.out,
        dtype=jnp.float64 if args.float64 else jnp.float32,
    )
    if args.quick:
        kwargs.update(_QUICK)
    closure_study(**kwargs)
    return 0
