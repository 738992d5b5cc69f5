"""Speed of scheduled-NTK surrogate solves against the true flow (issue 4 target: ≥ 100×).

Run: `PYTHONPATH=. python benchmarks/scheduled_speed.py [--t-end 20] [--grid-size 8]`

Builds a G-node time grid (and a loss grid) on the **sine** true flow, then times, compiled,
the true flow and each surrogate solve: wall seconds and process CPU seconds (CPU time is the
steadier figure on a shared machine), median of `--repeats`. Prints one line per method
with its speed-up over the true flow measured in the same run.
"""

import argparse
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ntkode import (
    KernelGrid,
    ScheduledKernelProblem,
    SolveOptions,
    schedules as S,
    sine_problem,
    solve,
)
from ntkode._core._solve import _prepare


def _timed(problem, repeats, **kw):
    fn, args = _prepare(problem, None, SolveOptions.build(**kw))
    compiled = fn.lower(*args).compile()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        sol = jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return sol, statistics.median(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--t-end", type=float, default=20.0)
    p.add_argument("--grid-size", type=int, default=8)
    p.add_argument("--activation", default="relu")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    prob = sine_problem(t_end=args.t_end, activation=args.activation)
    ts = jnp.linspace(0.0, args.t_end, 101)
    times = np.linspace(0.0, args.t_end, args.grid_size)
    saveat = jnp.asarray(np.unique(np.concatenate([np.asarray(ts), times])))
    ref = solve(prob, saveat=saveat, save_weights=True, rtol=1e-5, atol=1e-7)
    true, tw, tc = _timed(prob, 1, saveat=saveat, rtol=1e-5, atol=1e-7)
    print(f"true flow: {tw:.3f} s wall, {tc:.3f} s CPU, {int(true.num_steps)} steps")
    for sname, sched in (("time", S.Time()), ("loss", S.LossLevel())):
        grid = KernelGrid.from_solution(ref, times, prob.model, prob.data, schedule=sched)
        for iname, interp in (
            ("linear (Tsit5)", S.Linear()),
            ("average-2 (exact)", S.PiecewiseConstant("average", 2)),
            ("nearest (exact)", S.PiecewiseConstant()),
        ):
            sur = ScheduledKernelProblem(
                grid, prob.data, sched, interp, prob.loss, prob.tspan, prob.learning_rate
            )
            sol, w, c = _timed(sur, args.repeats, saveat=saveat)
            err = float(
                jnp.max(jnp.linalg.norm((sol.train - true.train).reshape(len(saveat), -1), axis=1))
                / jnp.linalg.norm(true.train[0] - true.y_train)
            )
            print(
                f"{sname:>4} {iname:<18} err {err:7.2%}  {w:.4f} s wall ({tw / w:6.0f}x), "
                f"{c:.4f} s CPU ({tc / c:6.0f}x), {int(sol.num_steps)} steps",
                flush=True,
            )


if __name__ == "__main__":
    main()
