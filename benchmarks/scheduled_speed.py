"""Speed of scheduled-NTK surrogate solves against the true flow, and exact vs Tsit5 solves.

Run: `PYTHONPATH=. python benchmarks/scheduled_speed.py [--quick] [--sizes 64,256] [--out r.json]`

For each problem size (the **sine** problem with `n_train = n_test = size`; `--quick` is the
comparison study's `--quick` problem, width 64, `t_end = 10`), builds a G-node time grid (and
a loss grid) on the true flow, then times, compiled, the true flow and each surrogate solve:
Tsit5 on the linear interpolant, and the exact per-piece exponentials
(`PiecewiseConstant("average", 2)`, `PiecewiseConstant()`). Each figure is split into

- `compile`: lowering and compiling (what `timed_solve` reports separately),
- `first`: the first call of the compiled solve (what one `timed_solve` measures),
- `steady`: the median of `--repeats` further calls (wall seconds; CPU seconds too),

so that one-off costs are not mistaken for the cost of a solve. The speed-up over the true
flow and the ratio exact / Tsit5 are measured in the same run, with the load average printed
beside them (the machine may be shared).
"""

import argparse
import json
import os
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
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    sol = jax.block_until_ready(compiled(*args))
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        sol = jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return sol, {
        "compile": compile_s,
        "first": first,
        "steady": statistics.median(walls),
        "steady_cpu": statistics.median(cpus),
    }


def run_size(size, width, t_end, grid_size, activation, repeats):
    prob = sine_problem(
        width=width,
        n_train=size,
        n_test=size,
        dim=4 if width <= 64 else 8,
        t_end=t_end,
        activation=activation,
    )
    ts = jnp.linspace(0.0, t_end, 101)
    times = np.linspace(0.0, t_end, grid_size)
    saveat = jnp.asarray(np.unique(np.concatenate([np.asarray(ts), times])))
    ref = solve(prob, saveat=saveat, save_weights=True, rtol=1e-5, atol=1e-7)
    true, tt = _timed(prob, 1, saveat=saveat, rtol=1e-5, atol=1e-7)
    print(
        f"size {size} (width {width}, t_end {t_end}, G={grid_size}): true flow "
        f"{tt['steady']:.3f} s wall, {tt['steady_cpu']:.3f} s CPU, {int(true.num_steps)} steps, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for sname, sched in (("time", S.Time()), ("loss", S.LossLevel())):
        grid = KernelGrid.from_solution(ref, times, prob.model, prob.data, schedule=sched)
        tsit5 = None
        for iname, interp in (
            ("linear (Tsit5)", S.Linear()),
            ("average-2 (exact)", S.PiecewiseConstant("average", 2)),
            ("nearest (exact)", S.PiecewiseConstant()),
        ):
            sur = ScheduledKernelProblem(
                grid, prob.data, sched, interp, prob.loss, prob.tspan, prob.learning_rate
            )
            sol, t = _timed(sur, repeats, saveat=saveat)
            err = float(
                jnp.max(jnp.linalg.norm((sol.train - true.train).reshape(len(saveat), -1), axis=1))
                / jnp.linalg.norm(true.train[0] - true.y_train)
            )
            tsit5 = t if tsit5 is None else tsit5
            row = dict(
                size=size,
                schedule=sname,
                method=iname,
                error=err,
                steps=int(sol.num_steps),
                speedup=tt["steady"] / t["steady"],
                over_tsit5=t["steady"] / tsit5["steady"],
                first_over_tsit5=t["first"] / tsit5["first"],
                load=os.getloadavg()[0],
                **t,
            )
            rows.append(row)
            print(
                f"  {sname:>4} {iname:<18} err {err:7.2%}  steady {t['steady'] * 1e3:8.2f} ms "
                f"({row['speedup']:6.0f}x true, {row['over_tsit5']:.2f}x Tsit5), first call "
                f"{t['first'] * 1e3:8.2f} ms, compile {t['compile']:.2f} s, CPU "
                f"{t['steady_cpu'] * 1e3:.2f} ms, {row['steps']} steps, load {row['load']:.1f}",
                flush=True,
            )
    return {"true": tt, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the comparison study's quick problem")
    p.add_argument("--sizes", default=None, help="comma-separated n_train (default 64,256)")
    p.add_argument("--t-end", type=float, default=None)
    p.add_argument("--grid-size", type=int, default=8)
    p.add_argument("--activation", default="relu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.quick:
        plan = [(64, 64, args.t_end or 10.0)]
    else:
        sizes = [int(s) for s in (args.sizes or "64,256").split(",")]
        # The study's two problems: --quick (width 64, t_end 10) and the default (512, 50).
        plan = [
            (s, 64, args.t_end or 10.0) if s <= 64 else (s, 512, args.t_end or 50.0) for s in sizes
        ]
    out = {"devices": str(jax.devices()), "sizes": {}}
    for size, width, t_end in plan:
        out["sizes"][size] = run_size(
            size, width, t_end, args.grid_size, args.activation, args.repeats
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
