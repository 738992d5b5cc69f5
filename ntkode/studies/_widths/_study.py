r"""Width study: how close a finite network is to its infinite-width limit (Lee et al. 2019).

For each width and parameterisation, on **sine**: a network is built with the benchmark
hyperparameters, its empirical NTK $\Theta_0$ is compared with the analytic $\Theta_\infty$,
the true gradient flow is integrated with diffrax, and four distances are measured:

- `kernel_error_init` $= \|\Theta_0 - \Theta_\infty\|_F / \|\Theta_\infty\|_F$;
- `kernel_change` $= \|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$ over training;
- `trajectory_error` $= \max_t \|u_\text{frozen}(t) - u_\text{true}(t)\| / \|u_0 - Y\|$ (train
  outputs; frozen = the flow with $\Theta_0$, i.e. the linearised network);
- `prediction_gap` $= \|u_*^\text{net}(T) - u_*^\infty(T)\| / \|u_{0*} - Y_*\|$ (test outputs of
  the network vs the $\Theta_\infty$ predictor started from the network's own $u_0$),

plus the test losses of the network, of that predictor and of the mean predictor ($u_0 = 0$).
Log-log slopes against width are fitted per parameterisation; theory says $-1/2$.

The true flow is integrated with a tight tolerance (rtol 1e-6): the distances measured
are small, and the truth's own solver error must stay below them.

The learning rate is $\eta = n/\lambda_{\max}(\Theta_\infty)$, so that the stiffest mode of
the limiting flow has unit rate in both parameterisations (the standard-parameterised NTK
grows with width, and a fixed $\eta$ would make wide networks arbitrarily stiff).
"""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._core._gradient_flow import GradientFlowProblem
from ..._core._losses import mse
from ..._core._model import apply
from ..._core._regression import kernel_regression
from ..._core._solve import solve
from ..._infinite._mlp import MLP
from ..._ntk._api import ntk
from ..._plot import pyplot
from ...datasets import sine
from .._run import StudyRecord

METRICS = ("kernel_error_init", "kernel_change", "trajectory_error", "prediction_gap")
DEFAULT_WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def width_run(
    width: int,
    parameterization: str,
    data,
    *,
    depth: int = 2,
    activation="relu",
    t_end: float = 10.0,
    n_save: int = 11,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    key,
) -> dict[str, Any]:
    """One network of the width study; returns its measurements as plain Python numbers."""
    dtype = data.x_train.dtype
    model = MLP(
        data.x_train.shape[1],
        data.n_outputs,
        width,
        depth,
        activation,
        parameterization=parameterization,
        key=key,
        dtype=dtype,
    )
    x, xs, y, ys = data.x_train, data.x_test, data.y_train, data.y_test
    n = x.shape[0]
    start = time.perf_counter()
    spec = model.infinite()
    k_inf, ks_inf = spec.ntk(x), spec.ntk(xs, x)
    k0, ks0 = ntk(model, x)[:, :, 0, 0], ntk(model, xs, x)[:, :, 0, 0]
    lr = float(n / np.linalg.eigvalsh(np.asarray(k_inf, np.float64)).max())
    u0, us0 = apply(model, x), apply(model, xs)
    ts = jnp.linspace(0.0, t_end, n_save, dtype=dtype)
    problem = GradientFlowProblem(model, data, mse, (0.0, t_end), lr)
    sol = solve(problem, saveat=ts, rtol=rtol, atol=atol, save_weights=True)
    last = jax.tree.map(lambda w: w[-1], sol.weights)
    model_t = eqx.combine(last, eqx.partition(model, eqx.is_inexact_array)[1])
    k_t = ntk(model_t, x)[:, :, 0, 0]
    frozen = kernel_regression(k0, ks0, y, ts, learning_rate=lr, u0_train=u0, u0_test=us0)
    limit = kernel_regression(k_inf, ks_inf, y, t_end, learning_rate=lr, u0_train=u0, u0_test=us0)
    mean = kernel_regression(k_inf, ks_inf, y, t_end, learning_rate=lr)
    r0 = float(jnp.linalg.norm(u0 - y))
    traj = jnp.linalg.norm((frozen.train - sol.train).reshape(n_save, -1), axis=1) / r0
    return {
        "width": int(width),
        "parameterization": parameterization,
        "learning_rate": lr,
        "kernel_error_init": _rel(k0, k_inf),
        "kernel_change": _rel(k_t, k0),
        "trajectory_error": float(traj.max()),
        "prediction_gap": float(
            jnp.linalg.norm(sol.test[-1] - limit.test) / jnp.linalg.norm(us0 - ys)
        ),
        "train_loss_net": float(sol.train_loss[-1]),
        "test_loss_net": float(sol.test_loss[-1]),
        "test_loss_kernel_same_init": float(mse(limit.test, ys)),
        "test_loss_kernel_mean": float(mse(mean.test, ys)),
        "steps": sol.num_steps,
        "success": bool(sol.success),
        "seconds": time.perf_counter() - start,
    }


def fit_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of `log(values)` against `log(widths)` (NaN if < 2 usable points)."""
    w, v = np.asarray(widths, float), np.asarray(values, float)
    ok = (w > 0) & (v > 0) & np.isfinite(v)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(w[ok]), np.log(v[ok]), 1)[0])


def slopes(runs: list[dict], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """Fitted log-log slopes per parameterisation and metric (seeds averaged per width)."""
    out: dict[str, dict[str, float]] = {}
    for p in sorted({r["parameterization"] for r in runs}):
        rs = [r for r in runs if r["parameterization"] == p]
        widths = sorted({r["width"] for r in rs})
        out[p] = {
            m: fit_slope(widths, [np.mean([r[m] for r in rs if r["width"] == w]) for w in widths])
            for m in metrics
        }
    return out


def width_study(
    widths: Sequence[int] = DEFAULT_WIDTHS,
    parameterizations: Sequence[str] = ("ntk", "standard"),
    *,
    depth: int = 2,
    activation="relu",
    n_train: int = 256,
    n_test: int = 256,
    dim: int = 8,
    t_end: float = 10.0,
    seeds: int = 1,
    rtol: float = 1e-6,
    dtype=jnp.float32,
    out: str | None = None,
    progress: bool = True,
    key=None,
    resume: bool | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the width study on **sine** and return `{"settings", "runs", "slopes"}`.

    **Arguments:**

    - `widths`: hidden widths (≥ 2 for slopes); `parameterizations`: subset of
      `("ntk", "standard")`.
    - `depth`, `activation`: the network (`depth` hidden layers; benchmark
      hyperparameters $\\sigma_w = \\sqrt2$, $\\sigma_b = 0.1$, readout $\\sigma_w = 1$).
    - `n_train`, `n_test`, `dim`: the **sine** data.
    - `t_end`: training horizon in units where the stiffest limiting mode has rate 1.
    - `seeds`: networks per (width, parameterisation), at least 1; metrics are averaged for
      the slopes.
    - `rtol`: relative tolerance of the true flow's adaptive solver (`atol = rtol/100`). In
      the lazy regime the weights move by ~width^-1/2 of their size, so the tolerance must be
      tight: on **sine** (width 1024, standard) rtol 1e-4 left errors of 16% of the outputs'
      movement, while 1e-6 agreed with 1e-8 to 1e-3 (absolute).
    - `dtype`: floating dtype of data and weights (`float32` default, for speed).
    - `out`: a directory; `results.json` records the settings and is rewritten after every
      run (see `ntkode/studies/_run.py`). Rerun with the same settings, finished runs are
      read back instead of recomputed (`resume=None`: when the settings match; `True`:
      refuse other settings; `False`: recompute everything).
    - `progress`: print one line per run (to `log`).
    - `key`: seeds data and networks (default `jax.random.key(0)`).

    **Returns:** a dict with the settings, one record per run (see [`ntkode.width_run`][])
    and the fitted slopes.
    """
    for p in parameterizations:
        if p not in ("ntk", "standard"):
            raise ValueError(f"Unknown parameterization {p!r}: choose 'ntk' and/or 'standard'.")
    if not parameterizations:
        raise ValueError("`parameterizations` is empty: choose 'ntk' and/or 'standard'.")
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"`widths` must be positive integers, got {widths!r}.")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"`seeds` must be at least 1 (networks per width), got {seeds!r}.")
    if t_end <= 0:
        raise ValueError(f"`t_end` must be positive, got {t_end}.")
    seed_key = key
    key = jax.random.key(0) if key is None else key
    kdata, kmodel = jax.random.split(key)
    data = sine(n_train, n_test, dim, key=kdata, dtype=dtype)
    settings = {
        "widths": [int(w) for w in widths],
        "parameterizations": list(parameterizations),
        "depth": depth,
        "activation": activation if isinstance(activation, str) else repr(activation),
        "n_train": n_train,
        "n_test": n_test,
        "dim": dim,
        "t_end": t_end,
        "seeds": seeds,
        "rtol": rtol,
        "dtype": jnp.dtype(dtype).name,
        "key": None if seed_key is None else np.asarray(jax.random.key_data(seed_key)).tolist(),
        "hyperparameters": {"W_std": 2**0.5, "b_std": 0.1, "out_W_std": 1.0, "out_b_std": 0.1},
    }
    record = StudyRecord(out, "widths", settings, parts="runs", key=run_key, resume=resume,
                         log=log)  # fmt: skip
    for p in parameterizations:
        for w in widths:
            for s in range(seeds):
                name = run_key({"parameterization": p, "width": int(w), "seed": s})
                if name in record:
                    continue
                k = jax.random.fold_in(jax.random.fold_in(kmodel, int(w)), s)
                run = width_run(
                    int(w), p, data, depth=depth, activation=activation, t_end=t_end,
                    rtol=rtol, atol=rtol * 1e-2, key=k,
                )  # fmt: skip
                run["seed"] = s
                record.put(name, run, slopes=slopes(record.values()))
                if progress:
                    log(format_row(run))
    runs = record.values()
    result: dict[str, Any] = {"settings": record.settings, "runs": runs, "slopes": slopes(runs)}
    record.finish(slopes=result["slopes"])
    return result


def run_key(run: dict) -> str:
    """The part name of one run in `results.json`: `"ntk-w64-seed0"`."""
    return f"{run['parameterization']}-w{run['width']}-seed{run['seed']}"


HEADER = (
    f"{'param':8s} {'width':>6s} {'K0 err':>9s} {'K change':>9s} {'traj err':>9s} "
    f"{'pred gap':>9s} {'test net':>9s} {'test ker':>9s} {'steps':>6s} {'sec':>6s}"
)


def format_row(r: dict) -> str:
    return (
        f"{r['parameterization']:8s} {r['width']:6d} {r['kernel_error_init']:9.3e} "
        f"{r['kernel_change']:9.3e} {r['trajectory_error']:9.3e} {r['prediction_gap']:9.3e} "
        f"{r['test_loss_net']:9.4f} {r['test_loss_kernel_same_init']:9.4f} {r['steps']:6d} "
        f"{r['seconds']:6.1f}"
    )


def format_table(result: dict) -> str:
    """The runs and the fitted slopes as text."""
    lines = [HEADER] + [format_row(r) for r in result["runs"]]
    lines.append("")
    lines.append("fitted log-log slopes vs width (theory: -0.5)")
    for p, ms in result["slopes"].items():
        lines.append(f"  {p:8s} " + "  ".join(f"{m} {v:+.3f}" for m, v in ms.items()))
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Four log-log panels (one per metric), both parameterisations, with slopes."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for ax, m in zip(axes, METRICS, strict=True):
        for p, marker in (("ntk", "o"), ("standard", "s")):
            rs = [r for r in result["runs"] if r["parameterization"] == p]
            if not rs:
                continue
            ws = sorted({r["width"] for r in rs})
            vs = [np.mean([r[m] for r in rs if r["width"] == w]) for w in ws]
            slope = result["slopes"].get(p, {}).get(m, math.nan)
            ax.loglog(ws, vs, marker=marker, label=f"{p} (slope {slope:+.2f})")
        if result["runs"]:
            ws = np.array(sorted({r["width"] for r in result["runs"]}), float)
            ref = np.mean([r[m] for r in result["runs"] if r["width"] == ws[0]])
            ax.loglog(ws, ref * (ws / ws[0]) ** -0.5, "k--", lw=0.8, label="width$^{-1/2}$")
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("width")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
