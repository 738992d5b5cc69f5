"""How every cost grows with the training-set size n: the true flow against kernel surrogates.

    python benchmarks/scaling.py                          # sine, n = 256 … 16,384
    python benchmarks/scaling.py --problem digits         # digits CNN, n = 256, 1,024, 1,437
    python benchmarks/scaling.py --n 256 1024 --repeats 3 # a quick subset
    python benchmarks/scaling.py --figure-only            # redraw from scaling.json

For each `(problem, n)` and each method, one fresh subprocess (so that its peak resident
memory, `ru_maxrss`, is its own) measures wall seconds, solver steps and peak memory:

- `true`: the true gradient flow over `[0, t_end]` (Tsit5, `--rtol`, default 1e-4, the
  package default), with the weights saved at the `G` node times;
- `true_loose`: the same at `10·rtol` (the truth's own uncertainty; only where the true flow
  is cheap, `n ≤ --loose-max-n`);
- `frozen`: the NTK at initialisation (kernel build + exact solve);
- `scheduled_dense`: `G = 8` kernels at uniform node times of the `true` run (kernel builds +
  exact solve with `PiecewiseConstant("average", 2)` pieces and Lanczos bases);
- `scheduled_ode`: the same grid with linear interpolation, solved by Tsit5 (the route every
  non-MSE loss takes: its steps inherit the training flow's stiffness);
- `scheduled_lowrank`: the same kernels, each compressed to rank `r` as soon as it is built
  (`KernelGrid.from_params(rank=, compress=)`: one dense kernel in memory at a time; with
  `--trace` the shared `(n, n)` kernels, `SharedKernelGrid.compress`), then the exact solve
  in the span of each piece's node bases (`EigenBasis`: no Krylov error); compression by a
  randomized eigendecomposition (`--compress randomized`, the default: sketch
  `r + --oversample` columns, one power iteration) or by Lanczos (`--compress lanczos`,
  `2r` steps);
- `scheduled_nystrom`: Nyström kernels at the same states (`landmarks=`, `--landmarks`
  columns each, `O(n·m)` kernel entries instead of `O(n²)`; error estimated from 64
  sampled kernel rows), exact solve as `scheduled_lowrank`;
- `cheap`: a grid from exponential steps of the linearised network
  (`KernelGrid.from_linearised_steps`, no true flow at all): run + kernels + exact solve;
- `cheap_nystrom`: the same steps with Nyström kernels (`landmarks=`) for the steps and the
  grid, exact solve in the low-rank spans.

Surrogate errors are `max_t ‖u(t) − u_true(t)‖ / ‖u_true(0) − Y‖` on the train outputs
against the `true` run of the same `n`. Solves are compiled first and timed as the median of
`--repeats` calls; kernel builds (and the cheap runs) are timed after one warm-up build of
the same shape, as the true flow's time leaves out its compilation. Every
record carries `os.getloadavg()` at its start: the machine is shared and its timings noisy,
so ratios measured within one `(problem, n)` case are the figures to trust. Workers run
with `OPENBLAS_NUM_THREADS=1` unless it is set: LAPACK's small eigendecompositions (the
exact solver's `(2r)²` ones) are 20× slower with two threads fighting for two busy cores
(measured: 0.77 s against 0.038 s for a 512² `eigh` at load 8); XLA's own GEMMs and the
true flow do not use OpenBLAS. A case whose
true flow is predicted (from the per-step cost at the largest smaller n) to exceed
`--limit-minutes` is not run and is recorded as such; a subprocess still running at the
limit is stopped and recorded likewise.

Writes `benchmarks/scaling.json` (one record per `(problem, n, method)`: `seconds`, `steps`,
`peak_rss_gb`, `max_rel_train_error`, and the breakdown) after every record, and the log-log
figure `benchmarks/scaling.png` (digits: `scaling_digits.png`) with fitted exponents.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

METHODS = (
    "true",
    "true_loose",
    "frozen",
    "scheduled_dense",
    "scheduled_ode",
    "scheduled_lowrank",
    "scheduled_nystrom",
    "cheap",
    "cheap_nystrom",
)
DEFAULT_N = {"sine": (256, 1024, 4096, 8192, 16384), "digits": (256, 1024, 1437)}


# ---------------------------------------------------------------- one method, in a subprocess


def _problem(name: str, n: int, t_end: float):
    from ntkode.studies import sine_problem

    if name == "sine":
        return sine_problem(n_train=n, n_test=256, t_end=t_end)
    from ntkode.studies import digits_problem

    return digits_problem(n_train=n, t_end=t_end)


def _save_times(t_end: float, G: int):
    import jax.numpy as jnp
    import numpy as np

    nodes = np.linspace(0.0, t_end, G)
    return jnp.asarray(np.union1d(np.linspace(0.0, t_end, 101), nodes)), nodes


def _median_solve(problem, repeats: int, **kw):
    """Compile once, then the median wall time of `repeats` compiled solves."""
    import jax

    from ntkode._core._options import SolveOptions
    from ntkode._core._solve import _prepare

    fn, args = _prepare(problem, None, SolveOptions.build(**kw))
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    walls = []
    sol = None
    for _ in range(repeats):
        start = time.perf_counter()
        sol = jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - start)
    return sol, statistics.median(walls), compile_seconds


def _errors(sol, ref) -> dict:
    import numpy as np

    from ntkode._core._compare import _rel_error

    scale = float(np.linalg.norm(ref["train"][0] - ref["y_train"]))
    scale_test = float(np.linalg.norm(ref["test"][0] - ref["y_test"]))
    every = np.ones(ref["train"].shape[0], bool)  # both solutions reach t_end
    return {
        "max_rel_train_error": _rel_error(sol.train, ref["train"], scale, every),
        "max_rel_test_error": _rel_error(sol.test, ref["test"], scale_test, every),
    }


def _kernels_at(problem, params_list, nodes, **kw):
    """Node kernels of `params_list`; warm-up build first, then the timed build."""
    import jax

    import ntkode as nk

    model, data = problem.model, problem.data
    jax.block_until_ready(
        jax.tree.leaves(nk.KernelGrid.from_params(params_list[:1], model, data, nodes[:1], **kw))
    )
    start = time.perf_counter()
    grid = nk.KernelGrid.from_params(params_list, model, data, nodes, **kw)
    jax.block_until_ready(jax.tree.leaves(grid))
    return grid, time.perf_counter() - start


def _warm_build(build):
    """`(grid, seconds, first_seconds)`: `build()` twice, timed; the first call compiles.

    As for the kernels of the other methods (warm-up build first) and the true flow (its
    compilation is `compile_seconds`, not `seconds`), the cheap run's compilation is not
    counted in its cost; the first call's time (compilation included) is kept beside it.
    """
    import jax

    start = time.perf_counter()
    jax.block_until_ready(jax.tree.leaves(build()))
    first = time.perf_counter() - start
    start = time.perf_counter()
    grid = build()
    jax.block_until_ready(jax.tree.leaves(grid))
    return grid, time.perf_counter() - start, first


def worker(a) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ntkode as nk
    from ntkode import schedules as S

    warnings.simplefilter("ignore")
    problem = _problem(a.problem, a.n, a.t_end)
    ts, node_times = _save_times(a.t_end, a.grid_size)
    rec: dict = {"problem": a.problem, "n": a.n, "method": a.method, "loadavg": os.getloadavg()}
    ref_path = os.path.join(a.workdir, "true.npz")
    krylov = nk.KrylovBasis(dim=a.krylov_dim)
    average = S.PiecewiseConstant("average", 2)
    kw = dict(block_size=a.block_size, trace=a.trace)

    def sched(grid, interp=average, basis=krylov):
        return nk.ScheduledKernelProblem(
            grid,
            problem.data,
            S.Time(),
            interp,
            problem.loss,
            problem.tspan,
            problem.learning_rate,
            piece_basis=basis,
        )

    if a.method in ("true", "true_loose"):
        rtol = a.rtol * (10 if a.method == "true_loose" else 1)
        keep = a.method == "true"
        sol, sec, csec = _median_solve(
            problem, a.true_repeats, saveat=ts, rtol=rtol, atol=1e-2 * rtol, save_weights=keep
        )
        rec.update(seconds=sec, compile_seconds=csec, steps=int(sol.num_steps), rtol=rtol)
        rec["result"] = nk.RESULTS[sol.result]
        if keep:
            idx = [int(np.argmin(np.abs(np.asarray(sol.t) - t))) for t in node_times]
            leaves = [np.asarray(x[np.asarray(idx)]) for x in jax.tree.leaves(sol.weights)]
            np.savez(
                ref_path,
                t=np.asarray(sol.t),
                train=np.asarray(sol.train),
                test=np.asarray(sol.test),
                y_train=np.asarray(sol.y_train),
                y_test=np.asarray(sol.y_test),
                idx=np.asarray(idx),
                **{f"w{i}": w for i, w in enumerate(leaves)},
            )
        ref = dict(np.load(ref_path))
        rec.update(_errors(sol, ref))
        rec["final_train_loss"] = float(sol.train_loss[-1])
    else:
        ref = dict(np.load(ref_path))
        params, static = eqx_partition(problem.model)
        treedef = jax.tree.structure(params)
        leaves = [jnp.asarray(ref[f"w{i}"]) for i in range(treedef.num_leaves)]
        states = [
            jax.tree.unflatten(treedef, [w[g] for w in leaves]) for g in range(len(node_times))
        ]
        if a.method == "frozen":
            grid, build = _kernels_at(problem, [params], jnp.zeros(1), **kw)
            sol, sec, csec = _median_solve(sched(grid, S.PiecewiseConstant()), a.repeats, saveat=ts)
        elif a.method in ("scheduled_dense", "scheduled_ode", "scheduled_lowrank"):
            if a.method == "scheduled_lowrank":
                # Each node's kernel compressed as soon as it is built (one dense kernel in
                # memory at a time); with --trace the shared (n, n) kernels are compressed.
                dim = a.n * (1 if a.trace else problem.data.n_outputs)
                if a.compress == "lanczos":
                    options = dict(krylov_dim=min(2 * a.rank, dim))
                else:
                    options = dict(sketch=min(a.rank + a.oversample, dim), power_iterations=1)
                    rec["sketch"] = options["sketch"]
                kw = dict(kw, rank=a.rank, compress=options)
            grid, build = _kernels_at(problem, states, jnp.asarray(node_times), **kw)
            grid = eqx_tree_at(grid, ref)
            if a.method == "scheduled_lowrank":
                rec["compress"] = a.compress
                err = np.asarray(grid.compression_error)
                rec["compression_error_train"] = float(err[:, 0].max())
                rec["compression_error_test"] = float(err[:, 1].max())
                rec["rank"] = a.rank
            interp = S.Linear() if a.method == "scheduled_ode" else average
            if a.method == "scheduled_ode":
                p = nk.ScheduledKernelProblem(
                    grid,
                    problem.data,
                    S.Time(),
                    interp,
                    problem.loss,
                    problem.tspan,
                    problem.learning_rate,
                )
                sol, sec, csec = _median_solve(p, 1, saveat=ts, rtol=a.rtol, atol=1e-2 * a.rtol)
            elif a.method == "scheduled_lowrank":
                p = sched(grid, interp, nk.EigenBasis())
                sol, sec, csec = _median_solve(p, a.repeats, saveat=ts)
            else:
                sol, sec, csec = _median_solve(sched(grid, interp), a.repeats, saveat=ts)
        elif a.method == "scheduled_nystrom":
            # Warm-up build of one node (compilation), then the timed build.
            one = nk.KernelGrid.from_params(
                states[:1], problem.model, problem.data, jnp.zeros(1), landmarks=a.landmarks, **kw
            )
            jax.block_until_ready(jax.tree.leaves(one))
            start = time.perf_counter()
            grid = nk.KernelGrid.from_params(
                states,
                problem.model,
                problem.data,
                jnp.asarray(node_times),
                landmarks=a.landmarks,
                **kw,
            )
            jax.block_until_ready(jax.tree.leaves(grid))
            build = time.perf_counter() - start
            grid = eqx_tree_at(grid, ref)
            err = np.asarray(grid.compression_error)
            rec["compression_error_train_estimate"] = float(err[:, 0].max())
            rec["compression_error_test_estimate"] = float(err[:, 1].max())
            rec["landmarks"] = a.landmarks
            sol, sec, csec = _median_solve(
                sched(grid, average, nk.EigenBasis()), a.repeats, saveat=ts
            )
        elif a.method == "cheap_nystrom":
            grid, build, rec["first_build_seconds"] = _warm_build(
                lambda: nk.KernelGrid.from_linearised_steps(
                    problem,
                    node_times,
                    substeps=a.substeps,
                    piece_basis=nk.EigenBasis(),
                    landmarks=a.landmarks,
                    **kw,
                )
            )
            err = np.asarray(grid.compression_error)
            rec["compression_error_train_estimate"] = float(err[:, 0].max())
            rec["compression_error_test_estimate"] = float(err[:, 1].max())
            rec["landmarks"] = a.landmarks
            rec["substeps"] = a.substeps
            rec["linearised_steps"] = (len(node_times) - 1) * a.substeps
            sol, sec, csec = _median_solve(
                sched(grid, average, nk.EigenBasis()), a.repeats, saveat=ts
            )
        elif a.method == "cheap":
            grid, build, rec["first_build_seconds"] = _warm_build(
                lambda: nk.KernelGrid.from_linearised_steps(
                    problem, node_times, substeps=a.substeps, piece_basis=krylov, **kw
                )
            )
            rec["substeps"] = a.substeps
            rec["linearised_steps"] = (len(node_times) - 1) * a.substeps
            sol, sec, csec = _median_solve(sched(grid), a.repeats, saveat=ts)
        else:
            raise SystemExit(f"unknown method {a.method!r}; choose from {METHODS}")
        rec.update(
            build_seconds=build,
            solve_seconds=sec,
            compile_seconds=csec,
            seconds=build + sec,
            steps=int(sol.num_steps),
            result=nk.RESULTS[sol.result],
        )
        rec.update(_errors(sol, ref))
        rec["final_train_loss"] = float(sol.train_loss[-1])
    rec["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return rec


def eqx_partition(model):
    from ntkode._core._model import partition

    return partition(model)


def eqx_tree_at(grid, ref):
    """Remember the true run's initial outputs on the grid (surrogates start from them)."""
    import equinox as eqx
    import jax.numpy as jnp

    dtype = grid.nodes.dtype
    u0 = jnp.asarray(ref["train"][0], dtype), jnp.asarray(ref["test"][0], dtype)
    return eqx.tree_at(lambda g: (g.u0_train, g.u0_test), grid, u0, is_leaf=lambda x: x is None)


# ---------------------------------------------------------------- the driver


def _run(a, method: str, n: int, workdir: str, limit: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--problem", a.problem, "--n", str(n)]
    for flag in (
        "t_end",
        "grid_size",
        "rank",
        "krylov_dim",
        "repeats",
        "true_repeats",
        "rtol",
        "substeps",
        "block_size",
        "compress",
        "oversample",
        "landmarks",
    ):
        value = getattr(a, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    if a.trace:
        cmd.append("--trace")
    cmd += ["--workdir", workdir]
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    start = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {
            "problem": a.problem,
            "n": n,
            "method": method,
            "status": "not finished",
            "note": f"stopped at the {limit / 60:.0f}-minute limit",
        }
    if res.returncode:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {
            "problem": a.problem,
            "n": n,
            "method": method,
            "status": "failed",
            "note": " | ".join(tail),
        }
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    rec["status"] = "ok"
    rec["wall_with_startup"] = time.perf_counter() - start
    return rec


def _fit(records, method: str):
    import numpy as np

    pts = [
        (r["n"], r["seconds"])
        for r in records
        if r.get("method") == method and r.get("status") == "ok" and r.get("seconds", 0) > 0
    ]
    if len(pts) < 2:
        return None
    n, s = np.log(np.asarray(pts, dtype=float)).T
    return float(np.polyfit(n, s, 1)[0])


QUIET_LOAD = 4.0  # 1-minute load average at a record's start, on the 2-core machine


def _quiet(record) -> bool:
    return record.get("loadavg", [float("inf")])[0] <= QUIET_LOAD


def figure(records, path: str, problem: str) -> dict:
    """Two panels over n: wall seconds (log-log, fitted exponents) and max train error."""
    from ntkode._plot import pyplot

    plt = pyplot()
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(12, 5.2))
    exponents, handles, ns = {}, [], set()
    for i, method in enumerate(METHODS):
        rows = sorted(
            (
                r
                for r in records
                if r.get("method") == method
                and r.get("status") == "ok"
                and r.get("problem") == problem
            ),
            key=lambda r: r["n"],
        )
        if not rows:
            continue
        # Exponents from the runs on a quiet machine only (load average ≤ QUIET_LOAD).
        p = _fit([r for r in rows if _quiet(r)], method)
        exponents[method] = p
        label = method + (f" (seconds ~ n^{p:.2f}, quiet runs)" if p is not None else "")
        n = [r["n"] for r in rows]
        ns.update(n)
        (line,) = ax.loglog(n, [r["seconds"] for r in rows], "-", color=f"C{i}", label=label)
        handles.append(line)
        for r in rows:  # filled: quiet machine; hollow: loaded machine
            face = f"C{i}" if _quiet(r) else "white"
            ax.loglog(r["n"], r["seconds"], "o", color=f"C{i}", mfc=face)
            if method != "true":  # the reference: zero error by definition
                ax_err.loglog(r["n"], 100 * r["max_rel_train_error"], "o", color=f"C{i}", mfc=face)
        if method != "true":
            ax_err.loglog(n, [100 * r["max_rel_train_error"] for r in rows], "-", color=f"C{i}")
    ax.set(
        xlabel="training examples n",
        ylabel="wall seconds (build + solve)",
        title=f"{problem}: cost of the true flow and of each surrogate\n"
        f"(filled: quiet machine, load ≤ {QUIET_LOAD:g}; hollow: loaded machine)",
    )
    ax_err.set(
        xlabel="training examples n",
        ylabel="max over t of relative train error (%)",
        title=f"{problem}: surrogate error against the true flow",
    )
    ticks = sorted(ns)
    for a in (ax, ax_err):
        a.grid(True, which="major", alpha=0.3)
        a.set_xticks(ticks, [f"{t:,}" for t in ticks])
        a.xaxis.set_minor_formatter(plt.NullFormatter())
    ax_err.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return exponents


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problem", default="sine", choices=["sine", "digits"])
    p.add_argument("--n", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--t-end", type=float, default=10.0)
    p.add_argument("--grid-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=256, help="rank of scheduled_lowrank")
    p.add_argument("--krylov-dim", type=int, default=64, help="Lanczos steps per piece")
    p.add_argument("--compress", default="randomized", choices=["randomized", "lanczos"])
    p.add_argument("--oversample", type=int, default=32, help="randomized sketch: rank + this")
    p.add_argument("--landmarks", type=int, default=512, help="Nyström landmark columns")
    p.add_argument("--substeps", type=int, default=1, help="linearised steps per interval")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=3, help="timed surrogate solves (median)")
    p.add_argument("--true-repeats", type=int, default=1, help="timed true flows (median)")
    p.add_argument("--loose-max-n", type=int, default=1024)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--trace", action="store_true", help="output-traced kernels (k > 1)")
    p.add_argument("--limit-minutes", type=float, default=30.0)
    p.add_argument(
        "--tag",
        default="",
        help="suffix of the recorded method names (e.g. _m384 for a --landmarks 384 variant)",
    )
    p.add_argument("--out", default=os.path.join(HERE, "scaling.json"))
    p.add_argument(
        "--figure", default=None, help="default benchmarks/scaling.png (sine), scaling_digits.png"
    )
    p.add_argument("--figure-only", action="store_true")
    p.add_argument(
        "--keep",
        default=None,
        help="folder keeping each n's reference run (true.npz), so that a later call with "
        "--methods other than true reuses it instead of a temporary folder",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        a.method, a.n = a.worker, a.n[0]
        print(json.dumps(worker(a)))
        return
    from ntkode._core._records import read_json, write_json

    records = read_json(a.out) or []
    if not a.figure_only:
        ns = a.n or DEFAULT_N[a.problem]
        per_step = {}  # n -> true-flow seconds per step, for predictions
        for n in ns:
            if a.keep:  # the reference run stays for later invocations of other methods
                os.makedirs(os.path.join(a.keep, f"{a.problem}-{n}"), exist_ok=True)
            keep = a.keep and contextlib.nullcontext(os.path.join(a.keep, f"{a.problem}-{n}"))
            with keep or tempfile.TemporaryDirectory() as workdir:
                for method in a.methods:
                    if method == "true_loose" and n > a.loose_max_n:
                        continue
                    if "nystrom" in method and a.landmarks >= n:
                        print(f"[{a.problem} n={n}] {method}: not run (--landmarks ≥ n)")
                        continue
                    if method == "true" and per_step:
                        m = max(per_step)
                        predicted = per_step[m][0] * (n / m) * per_step[m][1]
                        if predicted > 60 * a.limit_minutes:
                            rec = {
                                "problem": a.problem,
                                "n": n,
                                "method": "true",
                                "status": "not run",
                                "predicted_seconds": predicted,
                                "note": f"predicted {predicted / 60:.0f} min from n={m}",
                            }
                            print(json.dumps(rec), flush=True)
                            records = [
                                r
                                for r in records
                                if (r.get("problem"), r.get("n"), r.get("method"))
                                != (a.problem, n, method)
                            ] + [rec]
                            write_json(a.out, records)
                            break
                    print(
                        f"[{a.problem} n={n}] {method} (load {os.getloadavg()[0]:.1f})", flush=True
                    )
                    rec = _run(a, method, n, workdir, 60 * a.limit_minutes)
                    rec["method"] = name = method + a.tag
                    print(json.dumps(rec), flush=True)
                    records = [
                        r
                        for r in records
                        if (r.get("problem"), r.get("n"), r.get("method")) != (a.problem, n, name)
                    ] + [rec]
                    write_json(a.out, records)
                    if method == "true":
                        if rec.get("status") != "ok":
                            break
                        per_step[n] = (rec["seconds"] / max(rec["steps"], 1), rec["steps"])
    path = a.figure or os.path.join(
        HERE, "scaling.png" if a.problem == "sine" else f"scaling_{a.problem}.png"
    )
    exps = figure([r for r in records if r.get("problem") == a.problem], path, a.problem)
    print("fitted exponents (seconds ~ n^p):", json.dumps(exps))


if __name__ == "__main__":
    main()
