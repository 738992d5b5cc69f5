"""Benchmark grid tuning: cost of one gradient vs one surrogate forward solve, and a full run.

Run: PYTHONPATH=. python benchmarks/tuning.py [--width 128 --n-train 64 --G 8 --steps 20]

Problem: **sine** (small by default: MLP dim→width×2→1, ReLU, t ∈ [0, t_end]), a uniform
time-scheduled grid of G kernels on the true path, linear interpolation, Tsit5 surrogate at
rtol 1e-4. For each diffrax adjoint it times (compiled, median of `--repeats`) the objective
`J` alone (one surrogate solve) and `J` with its gradient, and prints the ratio (target ≤ 4×).
Time nodes (kernels recomputed at the node times) are timed the same way. Then the wall time
of full tuning runs (Adam, BFGS), compilation included.
"""

import argparse
import statistics
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx

import ntkode as nk
from ntkode._tuning._objective import _value, objective_and_gradient
from ntkode._tuning._tune import build_objective


def _median_seconds(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--dim", type=int, default=4)
    ap.add_argument("--t-end", type=float, default=10.0)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    problem = nk.sine_problem(
        width=args.width,
        n_train=args.n_train,
        n_test=args.n_train,
        dim=args.dim,
        t_end=args.t_end,
    )
    ts = jnp.linspace(0.0, args.t_end, 101)
    ref = nk.solve(problem, saveat=ts, rtol=1e-5, atol=1e-7, save_weights=True)
    node_t = ts[np.linspace(0, 100, args.G).round().astype(int)]
    grid = nk.KernelGrid.from_solution(ref, node_t, problem.model, problem.data)
    sched = nk.ScheduledKernelProblem(
        grid, problem.data, tspan=problem.tspan, learning_rate=problem.learning_rate
    )
    _, solve_s, _ = nk.timed_solve(sched, saveat=ts)
    print(
        f"sine: width {args.width}, n_train {args.n_train}, t_end {args.t_end}, G={args.G}, "
        f"{jax.devices()[0].platform}, dtype {problem.data.y_train.dtype}"
    )
    print(f"surrogate solve (nk.timed_solve, compiled): {solve_s * 1e3:.1f} ms")
    print()
    print(f"{'nodes':<9}{'adjoint':<28}{'J ms':>9}{'J+grad ms':>11}{'ratio':>8}")
    adjoints = [
        diffrax.RecursiveCheckpointAdjoint(),
        diffrax.DirectAdjoint(),
        diffrax.ForwardMode(),
    ]
    kinds = {"schedule": nk.tuning.ScheduleNodes(), "time": nk.tuning.TimeNodes(problem.model)}
    for nodes, kind in kinds.items():
        for adjoint in adjoints if nodes == "schedule" else adjoints[:1] + adjoints[2:]:
            obj, z0 = build_objective(sched, ref, nodes=kind, adjoint=adjoint)
            fwd = _median_seconds(lambda obj=obj: _value(obj, z0), args.repeats)
            grad = _median_seconds(
                lambda obj=obj, a=adjoint: objective_and_gradient(obj, z0, a), args.repeats
            )
            name = type(adjoint).__name__
            print(f"{nodes:<9}{name:<28}{fwd * 1e3:>9.1f}{grad * 1e3:>11.1f}{grad / fwd:>7.2f}x")
    print()
    for label, opt, adjoint in (
        (f"Adam(0.1), {args.steps} steps", optax.adam(0.1), None),
        (f"BFGS, {args.steps} steps", optx.BFGS(1e-6, 1e-8), None),
    ):
        res = nk.tune_grid(sched, ref, optimiser=opt, adjoint=adjoint, steps=args.steps)
        print(
            f"full tuning run, schedule nodes, {label}: {res.seconds:.1f} s wall "
            f"(compilation included), J {res.initial_objective:.4g} -> {res.objective:.4g} "
            f"({res.reduction:.2f}x)"
        )


if __name__ == "__main__":
    main()
