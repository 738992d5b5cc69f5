"""`ntkode closure`: can a U-Net learn planar topology, and is it its own kernel machine?"""

import argparse

NAME = "closure"
HELP = (
    "Train a U-Net on Jordan-curve images (four families, incl. non-star-shaped) and score it "
    "on one, two and three shapes and at twice the size against the parity algorithm; then "
    "learning curves of the network and of kernel regression with its NTK at init, after "
    "training, and its SGD path kernel. Sizes are chosen for ≤ 15 minutes on two CPU cores "
    "(32×32 images, 4,096 for training; kernel part at 16×16, NTK machines at n=64 and 256, "
    "the path kernel at n=64 scored on 16 test images: its 20 SGD steps each cost a Jacobian "
    "of every query, the default's largest stage): `--kernel-n 64,256,1024 --curve-channels "
    "4` adds kernel machines at n=1,024 (see benchmarks/README.md for measured times and the "
    "`--size 64 --n-train 10000` GPU configuration)."
)

# Under a minute on two cores: a small network on few images, every stage exercised.
QUICK = dict(
    n_train=128, n_test=16, epochs=1, size=32, kernel_size=16, curve_n=(16, 32),
    kernel_n=(16,), path_n=(8,), kernel_test=8, curve_steps=10, path_epochs=1,
    path_batch_size=8, path_test=8, channels=4, scales=3,
)  # fmt: skip


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="closure-results", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a tiny run of every stage (< 1 min)")
    parser.add_argument("--size", type=int, default=32, help="training image side (pixels)")
    parser.add_argument("--n-train", type=int, default=4096, help="training images")
    parser.add_argument("--n-test", type=int, default=256, help="images per test set")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--optimiser", choices=("adam", "ranger"), default="adam")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--scales", type=int, default=4, help="U-Net resolutions")
    parser.add_argument("--channels", type=int, default=8, help="U-Net channels (finest)")
    parser.add_argument("--growth", type=float, default=1.0, help="channel factor per scale")
    parser.add_argument("--norm", choices=("none", "group"), default="none")
    parser.add_argument("--kind", default="mixed", help="curve families (mixed, star, ...)")
    parser.add_argument("--kernel-size", type=int, default=16, help="image side of kernel part")
    parser.add_argument(
        "--curve-channels", type=int, default=None,
        help="U-Net channels of the learning-curve networks (default: --channels)",
    )  # fmt: skip
    parser.add_argument(
        "--curve-n", type=_sizes, default=(64, 256, 1024, 4096), help="network curve sizes"
    )
    parser.add_argument("--kernel-n", type=_sizes, default=(64, 256), help="NTK machine sizes")
    parser.add_argument("--path-n", type=_sizes, default=(64,), help="path kernel sizes")
    parser.add_argument("--kernel-test", type=int, default=128, help="kernel test images")
    parser.add_argument("--curve-steps", type=int, default=2000, help="steps per curve network")
    parser.add_argument("--path-epochs", type=int, default=10, help="SGD epochs (path run)")
    parser.add_argument("--path-batch-size", type=int, default=32, help="SGD batch (path run)")
    parser.add_argument("--path-lr", type=float, default=1.0, help="SGD rate (path run)")
    parser.add_argument(
        "--path-test", type=int, default=16,
        help="path machine test images (each SGD step costs a Jacobian of every one)",
    )  # fmt: skip
    parser.add_argument("--memory-gb", type=float, default=2.0, help="memory for NTK features (GB)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-progress", action="store_true", help="print nothing while running")
    parser.add_argument("--float64", action="store_true", help="run in float64")


def run(args: argparse.Namespace) -> int:
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ._study import closure_study

    kwargs = dict(
        size=args.size, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
        batch_size=args.batch_size, optimiser=args.optimiser, learning_rate=args.lr,
        scales=args.scales, channels=args.channels, growth=args.growth, norm=args.norm,
        kind=args.kind, kernel_size=args.kernel_size, curve_channels=args.curve_channels,
        curve_n=args.curve_n,
        kernel_n=args.kernel_n, path_n=args.path_n, kernel_test=args.kernel_test,
        curve_steps=args.curve_steps, path_epochs=args.path_epochs,
        path_batch_size=args.path_batch_size, path_learning_rate=args.path_lr,
        path_test=args.path_test,
        memory_gb=args.memory_gb, seed=args.seed, out=args.out,
        progress=not args.no_progress, dtype=jnp.float64 if args.float64 else jnp.float32,
    )  # fmt: skip
    if args.quick:
        # --quick shrinks what was left at its default; options given explicitly win.
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        defaults = vars(parser.parse_args([]))
        given = {k for k in QUICK if getattr(args, k) != defaults[k]}
        kwargs.update({k: v for k, v in QUICK.items() if k not in given})
        if given:
            shown = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in sorted(given))
            print(f"--quick with {shown} as given", flush=True)
    # Ctrl-C is handled by `ntkode`'s main (the study runs in a worker thread): it stops at
    # once, and a rerun of the same command resumes from the checkpoints.
    closure_study(**kwargs)
    return 0
