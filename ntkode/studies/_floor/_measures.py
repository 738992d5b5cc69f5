r"""What the floor study measures on a solved run: truths at two tolerances, surrogate errors
over time, and whether the NTK velocity accounts for how the outputs actually moved."""

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ... import KernelGrid, ScheduledKernelProblem, schedules, solve, trajectory_errors


def save_times(t_end: float, dt: float, extra: Sequence[float] = ()) -> np.ndarray:
    """`0, dt, 2dt, …, t_end` together with the `extra` times, sorted, without near-repeats."""
    steps = int(round(t_end / dt))
    if steps < 2 or abs(steps * dt - t_end) > 1e-9 * t_end:
        raise ValueError(
            f"`sample_dt` = {dt} must divide `t_end` = {t_end} into at least two intervals."
        )
    t = np.unique(np.concatenate([np.linspace(0.0, t_end, steps + 1), np.asarray(extra, float)]))
    # Times closer than float32 tells apart would be one saved time twice.
    keep = np.concatenate([[True], np.diff(t) > 1e-6 * t_end])
    return t[keep]


def on_grid(t: np.ndarray, times: Sequence[float]) -> np.ndarray:
    """Indices of the saved times `t` nearest to `times` (each must be a saved time)."""
    want = np.asarray(times, float)
    idx = np.abs(t[None, :] - want[:, None]).argmin(axis=1)
    span = max(float(t[-1] - t[0]), 1.0)
    if np.any(np.abs(t[idx] - want) > 1e-5 * span):
        raise ValueError("internal: a requested time is not among the saved times.")
    return idx


def solve_truths(
    problem, saveat: np.ndarray, rtol: float, loose: float, log: Callable[[str], Any]
) -> tuple[Any, Any, dict[str, Any]]:
    """The true flow at `rtol` (the reference, weights saved) and at `loose · rtol`.

    Both use `solve`'s Tsit5 with `atol = rtol/100`. The loose run saves weights too, so that
    it reuses the compiled reference solve; they are dropped at once. Returns `(reference,
    loose run without weights, record)`.
    """
    ts = jnp.asarray(saveat, problem.t0.dtype)
    runs, record = [], {}
    for name, tol in (("reference", rtol), ("loose", loose * rtol)):
        start = time.perf_counter()
        sol = solve(problem, saveat=ts, rtol=tol, atol=tol / 100, save_weights=True)
        sol.train.block_until_ready()
        seconds = time.perf_counter() - start
        if not sol.success:
            log(f"  warning: the {name} true flow: {sol.message}")
        record[name] = {
            "rtol": tol,
            "steps": int(sol.num_steps),
            "seconds": seconds,
            "success": bool(sol.success),
            "final_train_loss": float(sol.train_loss[-1]),
        }
        runs.append(sol)
    ref, lo = runs
    lo = lo.without_weights()
    errs = trajectory_errors(lo, ref)
    record["uncertainty_train"] = errs["max_rel_train_error"]
    record["uncertainty_test"] = errs["max_rel_test_error"]
    record["uncertainty_vs_time"] = error_curve(lo, ref)
    return ref, lo, record


def error_curve(sol, ref) -> dict[str, list[float]]:
    r"""$\|u(t) - u_\text{ref}(t)\| / \|u_\text{ref}(0) - Y\|$ at the reference's saved times,
    train and test (the curve whose maximum is [`ntkode.trajectory_errors`][])."""
    out = {"t": np.asarray(ref.t, float).tolist()}
    for name, u, uref, y in (
        ("train", sol.train, ref.train, ref.y_train),
        ("test", sol.test, ref.test, ref.y_test),
    ):
        scale = float(jnp.linalg.norm(uref[0] - y))
        diff = jnp.sqrt(jnp.sum((u - uref) ** 2, axis=(-2, -1)))
        out[name] = (np.asarray(diff) / scale).tolist()
    return out


def scheduled_error(
    problem, ref, nodes: Sequence[float], kernel_train, kernel_test
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The time-scheduled, linearly interpolated surrogate with the given node kernels
    (`(G, n, n, k, k)` and `(G, m, n, k, k)`), started from the reference's outputs; its
    max errors and error curves against `ref`."""
    dtype = ref.train.dtype
    grid = KernelGrid(
        jnp.asarray(nodes, dtype),
        jnp.asarray(kernel_train, dtype),
        jnp.asarray(kernel_test, dtype),
        n_outputs=problem.data.n_outputs,
        u0_train=ref.train[0],
        u0_test=ref.test[0],
    )
    surrogate = ScheduledKernelProblem(
        grid,
        problem.data,
        schedules.Time(),
        schedules.Linear(),
        problem.loss,
        problem.tspan,
        problem.learning_rate,
    )
    sol = solve(surrogate, saveat=ref.t)
    errs = trajectory_errors(sol, ref)
    return (
        {
            "train_error": errs["max_rel_train_error"],
            "test_error": errs["max_rel_test_error"],
            "steps": int(sol.num_steps),
            "success": bool(sol.success),
        },
        error_curve(sol, ref),
    )


def velocity_excess(
    t: np.ndarray, u: np.ndarray, du: np.ndarray, window: float, t_min: float = 0.0
) -> dict[str, Any]:
    r"""Does the NTK velocity account for how the outputs moved?

    Over consecutive windows $[a, b]$ of length `window` (from `t_min` on), the displacement
    $\Delta u = u(b) - u(a)$ is compared with the integral of the saved velocity
    $\dot u = -\eta\,\Theta_t\nabla_u L$ (trapezoid rule over the saved times):
    `excess` $= \langle \int_a^b \dot u\,dt, \Delta u\rangle / \|\Delta u\|^2 - 1$, zero where
    the chain rule $du/dt = J\dot\theta$ holds along the run, and the part of the NTK velocity
    that the outputs did not follow where it does not. `t_min` skips the first transients,
    where the stiffest modes decay faster than the saved times resolve. `misfit` is
    $\|\int \dot u\,dt - \Delta u\| / \|\Delta u\|$; a window is `reliable` while it is below
    1 (late in training the outputs barely move, and the ratio is then set by whatever the
    velocity does orthogonally to the tiny displacement). `median`: the median excess over
    the reliable windows.
    """
    t = np.asarray(t, float)
    u = np.asarray(u, float).reshape(t.shape[0], -1)
    du = np.asarray(du, float).reshape(t.shape[0], -1)
    out: dict[str, Any] = {"t": [], "excess": [], "misfit": [], "reliable": []}
    a = t_min
    while a + window <= t[-1] * (1 + 1e-9):
        sel = np.flatnonzero((t >= a - 1e-9) & (t <= a + window + 1e-9))
        if sel.size >= 2:
            tt, dd = t[sel], du[sel]
            integral = np.sum(0.5 * (dd[1:] + dd[:-1]) * np.diff(tt)[:, None], axis=0)
            moved = u[sel[-1]] - u[sel[0]]
            size = float(moved @ moved)
            if size > 0:
                out["t"].append(float(0.5 * (tt[0] + tt[-1])))
                out["excess"].append(float(integral @ moved / size - 1.0))
                misfit = float(np.linalg.norm(integral - moved) / np.sqrt(size))
                out["misfit"].append(misfit)
                out["reliable"].append(misfit < 1.0)
        a += window
    kept = [e for e, ok in zip(out["excess"], out["reliable"], strict=True) if ok]
    out["median"] = float(np.median(kept)) if kept else float("nan")
    return out


__all__ = [
    "error_curve",
    "on_grid",
    "save_times",
    "scheduled_error",
    "solve_truths",
    "velocity_excess",
]
