"""`ntkode compare`: true flow vs kernel surrogates on the **sine** reference problem."""

import os

from .._run import add_resume_arguments, explicit, resume_option

NAME = "compare"
HELP = "Compare the true gradient flow with kernel surrogates on the sine problem."

#: Options `--quick` gives a smaller default to; given explicitly, they win over it.
SIZES = ("width", "depth", "n_train", "n_test", "dim", "t_end")


def add_arguments(p):
    # The reference problem: sine (regression, the default) or digits (classification).
    p.add_argument(
        "--problem",
        default="sine",
        choices=["sine", "digits"],
        help="reference problem: sine (regression, default) or digits (CNN/MLP, cross-entropy)",
    )
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp"], help="digits network")
    p.add_argument("--width", type=int, default=None, help="hidden width (512; --quick: 64)")
    p.add_argument("--depth", type=int, default=None, help="hidden layers (default 2)")
    p.add_argument(
        "--n-train", type=int, default=None, help="training points (256; --quick 64; digits 1437)"
    )
    p.add_argument("--n-test", type=int, default=None, help="test points (256; --quick 64)")
    p.add_argument("--dim", type=int, default=None, help="input dimension (8; --quick: 4)")
    p.add_argument(
        "--t-end", type=float, default=None, help="end of training (50; --quick 10; digits 20)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activation", default="relu", choices=["relu", "softplus", "tanh", "gelu"])
    p.add_argument("--rtol", type=float, default=1e-5, help="reference true-flow rtol")
    p.add_argument("--out", default="ntkode-out", help="output folder (default ./ntkode-out)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small problem (explicit sizes still win): sine 64 points, width 64, t_end 10; "
        "digits 64 images, a 4-channel CNN, t_end 10, G in {2, 8}, no full-block grid. "
        "Mostly compilation: about 2 minutes of CPU, longer on a loaded machine",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--grid-sizes",
        default=None,
        help="comma-separated scheduled-NTK grid sizes (default 2,4,8,16; --quick: 2,8; "
        "'none' for no scheduled rows)",
    )
    p.add_argument(
        "--schedules", default="time,loss", help="scheduling variables: time,loss (default both)"
    )
    p.add_argument(
        "--interpolation",
        default="linear",
        choices=["linear", "smooth", "constant"],
        help="interpolation between grid kernels (default linear)",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="also tune the node positions of the G=4 and G=8 grids (adds tuned_* rows and "
        "tuned_nodes.png)",
    )
    p.add_argument(
        "--tune-nodes",
        default="schedule",
        choices=["schedule", "time"],
        help="what tuning moves: positions on the schedule (kernels fixed) or node times "
        "(kernels recomputed there)",
    )
    p.add_argument("--tune-steps", type=int, default=None, help="Adam steps (default 25)")
    add_resume_arguments(p)


def run(args) -> int:
    from ._study import compare_study, timing_note

    sizes = explicit(args, SIZES)
    for name in ("width", "depth", "n_train", "dim"):
        if name in sizes and sizes[name] < 1:
            raise SystemExit(f"ntkode compare: --{name.replace('_', '-')} must be at least 1.")
    if sizes.get("n_test", 0) < 0:
        raise SystemExit("ntkode compare: --n-test must be non-negative.")
    if "t_end" in sizes and not sizes["t_end"] > 0:
        raise SystemExit("ntkode compare: --t-end must be positive.")
    if not args.rtol > 0:
        raise SystemExit("ntkode compare: --rtol must be positive.")
    if args.grid_sizes is None:
        grid_sizes = (2, 8) if args.quick else (2, 4, 8, 16)
    elif args.grid_sizes.strip().lower() in ("none", ""):
        grid_sizes = ()
    else:
        try:
            grid_sizes = tuple(int(g) for g in args.grid_sizes.split(","))
        except ValueError:
            raise SystemExit("ntkode compare: --grid-sizes takes integers like 2,4,8,16.") from None
        if any(g < 1 for g in grid_sizes):
            raise SystemExit("ntkode compare: --grid-sizes must be at least 1.")
    if args.tune_steps is not None and args.tune_steps < 0:
        raise SystemExit("ntkode compare: --tune-steps must be non-negative.")
    schedules = tuple(s.strip() for s in args.schedules.split(",") if s.strip())
    if not set(schedules) <= {"time", "loss"}:
        raise SystemExit("ntkode compare: --schedules takes time and/or loss.")
    if args.quick and sizes:
        given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in sizes.items())
        print(f"--quick with {given} as given", flush=True)
    cmp = compare_study(
        problem_name=args.problem,  # classification hook
        model=args.model,  # classification hook
        grid_sizes=grid_sizes,
        schedules=schedules,
        interpolation=args.interpolation,
        tune=args.tune,
        tune_nodes=args.tune_nodes,
        tune_steps=args.tune_steps,
        seed=args.seed,
        activation=args.activation,
        rtol=args.rtol,
        out=args.out,
        quick=args.quick,
        progress=not args.no_progress,
        log=lambda s: print(s, flush=True),
        resume=resume_option(args),
        **sizes,
    )
    print()
    print(cmp.table())
    print(timing_note(cmp))
    print(
        f"\nwrote {os.path.join(args.out, 'results.json')} and "
        f"{os.path.join(args.out, 'compare.png')}"
        + (f" and {os.path.join(args.out, 'error_vs_G.png')}" if grid_sizes else "")
        + (f" and {os.path.join(args.out, 'tuned_nodes.png')}" if args.tune else "")
        + (f" and {os.path.join(args.out, 'accuracy.png')}" if args.problem == "digits" else "")
    )
    return 0
