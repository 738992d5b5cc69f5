r"""Study: the gated-ReLU NTK against the optimal MKL kernel and a trained network
(Dwaraknath, Ergen and Pilanci 2023, "Fixing the NTK").

For each data set: sample Gaussian gates (on the inputs with a bias coordinate appended),
build the masked kernels, and compare

- **NTK**: kernel ridge with the NTK weights $\eta_{\rm NTK}$ (the gates' pattern frequencies:
  exactly the empirical NTK of the gated-ReLU network with those gates);
- **MKL**: kernel ridge with the optimal weights, found by iterative reweighting from
  $\eta_{\rm NTK}$;
- **net**: the gated-ReLU network with the same gates, trained by Adam on squared error plus
  weight decay, with the decay that makes its convex reformulation the MKL optimum.

The ridge parameter of each kernel method is chosen by k-fold cross-validation on the
training split (validation squared error). The training objectives $J(\eta)$ of NTK and MKL are
compared at the *same* λ (the NTK's choice), where the paper proves $J_{\rm MKL} \le J_{\rm NTK}$.
"""

import inspect
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..._core._data import Dataset
from ..._core._results import as_record
from ..._gated._masked import MaskedKernels, ntk_weights
from ..._gated._network import GatedReLU, gated_relu_ntk_infinite
from ..._gated._solvers import MKLSolution, kernel_ridge, optimal_mkl
from ..._plot import pyplot
from .._run import StudyRecord

_REL_REGS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
_ALL = ("breast_cancer", "wine", "iris", "diabetes", "digits")


def _task(y: np.ndarray) -> str:
    if np.all(np.isin(y, (-1.0, 1.0))):
        classes = np.unique(np.argmax(y, axis=1) if y.shape[1] > 1 else y[:, 0])
        if classes.size < 2:
            raise ValueError(
                "`data.y_train` holds a single class; the comparison needs at least two "
                "classes (±1 targets with both signs, or one-vs-rest columns of 2+ classes)."
            )
        return "classification"
    return "regression"


def _metric(task: str, pred: np.ndarray, y: np.ndarray) -> float:
    """Accuracy for ±1 / one-vs-rest targets, mean squared error otherwise."""
    if task == "classification":
        if y.shape[1] == 1:
            return float(np.mean(np.sign(pred[:, 0]) == y[:, 0]))
        return float(np.mean(np.argmax(pred, 1) == np.argmax(y, 1)))
    return float(np.mean((pred - y) ** 2))


def _subfamily(family: MaskedKernels, rows: np.ndarray) -> MaskedKernels:
    """The same patterns (and gates, and counts) restricted to some training rows."""
    return MaskedKernels(family.x[rows], family.gates, family.masks[:, rows], family.counts)


def _cv_reg(
    fit: Callable[[MaskedKernels, np.ndarray, float], MKLSolution],
    family: MaskedKernels,
    y: np.ndarray,
    regs: Sequence[float],
    folds: int,
    seed: int,
) -> tuple[float, list[float]]:
    """The ridge parameter with the least k-fold validation squared error."""
    order = np.random.default_rng(seed).permutation(y.shape[0])
    parts = np.array_split(order, folds)
    errors = []
    for reg in regs:
        err = 0.0
        for i, val in enumerate(parts):
            train = np.concatenate([p for j, p in enumerate(parts) if j != i])
            sol = fit(_subfamily(family, train), y[train], reg)
            pred = np.asarray(sol.predict(family.x[val]))
            err += float(np.sum((pred - y[val]) ** 2))
        errors.append(err / y.shape[0])
    return float(regs[int(np.argmin(errors))]), errors


def _train_net(family, gates, x, y, beta, steps, lr, key):
    """Adam on ½‖f − Y‖² + β/(2√m)(‖U‖² + ‖V‖²), whose minimum over rescalings of each
    neuron is the standard group lasso ½‖·‖² + β Σ_j ‖u_j v_jᵀ‖/√m (the network of Dwaraknath
    et al. 2023)."""
    model = GatedReLU(x.shape[1], y.shape[1], key=key, gates=gates, u_scale=0.1)
    m = model.width
    opt = optax.adam(lr)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        mo = eqx.combine(p, static)
        f = jax.vmap(mo)(x)
        decay = (jnp.sum(mo.u**2) + jnp.sum(mo.v**2)) / (2 * math.sqrt(m))
        return 0.5 * jnp.sum((f - y) ** 2) + beta * decay

    @jax.jit
    def run(params):
        state = opt.init(params)

        def step(carry, _):
            params, state = carry
            # The gates' gradient is exactly zero (stop_gradient), so Adam never moves them.
            grads = jax.grad(loss)(params)
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, state), None, length=steps)
        return params

    model = eqx.combine(run(params), static)
    f = jax.vmap(model)(x)
    group = jnp.linalg.norm(model.u, axis=1) * jnp.linalg.norm(model.v, axis=1) / math.sqrt(m)
    objective = 0.5 * jnp.sum((f - y) ** 2) + beta * jnp.sum(group)
    return model, float(objective)


def mkl_compare(
    data: Dataset,
    *,
    num_gates: int = 500,
    rel_regs: Sequence[float] = _REL_REGS,
    folds: int = 3,
    cv_iter: int = 50,
    max_iter: int = 300,
    net_steps: int = 2000,
    net_lr: float = 1e-2,
    seed: int = 0,
) -> dict:
    """NTK vs optimal-MKL kernel regression vs a trained gated-ReLU network on one data set.

    **Arguments:**

    - `data`: a [`ntkode.Dataset`][] with vector inputs; ±1 (one-vs-rest) targets are scored
      by accuracy, anything else by mean squared error.
    - `num_gates`: Gaussian gates sampled (the network's width).
    - `rel_regs`: ridge parameters to cross-validate, as multiples of the NTK kernel's mean
      diagonal.
    - `folds`: cross-validation folds. `cv_iter` / `max_iter`: reweighting steps during
      cross-validation / for the final fits. `net_steps`, `net_lr`: Adam on the network.
    - `seed`: seeds gates, folds and the network.

    **Returns:** a JSON-ready dict of the measurements.
    """
    t0 = time.perf_counter()
    _check_settings(dict(folds=folds, num_gates=num_gates, rel_regs=rel_regs))
    if folds > data.n_train:
        raise ValueError(
            f"`folds`={folds} exceeds the {data.n_train} training examples of {data.name!r}; "
            "use fewer folds."
        )
    x = np.asarray(data.x_train, np.float64).reshape(data.n_train, -1)
    y = np.asarray(data.y_train, np.float64)
    xt = np.asarray(data.x_test, np.float64).reshape(data.n_test, -1)
    yt = np.asarray(data.y_test, np.float64)
    task = _task(y)
    # A constant coordinate gives both the gates and the linear kernels an intercept.
    x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    xt = np.concatenate([xt, np.ones((xt.shape[0], 1))], axis=1)
    kg, kn = jax.random.split(jax.random.key(seed))
    gates = jax.random.normal(kg, (int(num_gates), x.shape[1]), jnp.float64)
    family = MaskedKernels.from_gates(jnp.asarray(x), gates)
    eta_ntk, stderr = ntk_weights(family, method="counts")
    k_ntk = family.kernel(eta_ntk)
    scale = float(jnp.mean(jnp.diag(k_ntk)))
    # How far the finite-width (Monte Carlo) NTK weights are from the infinite-width kernel.
    k_inf = gated_relu_ntk_infinite(jnp.asarray(x))
    ntk_vs_inf = float(jnp.linalg.norm(k_ntk - k_inf) / jnp.linalg.norm(k_inf))
    regs = [r * scale for r in rel_regs]

    fit_ntk = lambda fam, yy, reg: kernel_ridge(fam, yy, reg, eta_ntk)
    fit_mkl = lambda fam, yy, reg, it=cv_iter: optimal_mkl(
        fam, yy, reg, eta0=eta_ntk, max_iter=it, rtol=1e-6
    )
    reg_ntk, cv_ntk = _cv_reg(fit_ntk, family, y, regs, folds, seed)
    reg_mkl, cv_mkl = _cv_reg(fit_mkl, family, y, regs, folds, seed)

    ntk_sol = fit_ntk(family, y, reg_ntk)
    mkl_same = fit_mkl(family, y, reg_ntk, max_iter)  # the paper's comparison: same λ
    mkl_sol = mkl_same if reg_mkl == reg_ntk else fit_mkl(family, y, reg_mkl, max_iter)

    # Weight decay for which the network's convex program is the MKL optimum at reg_mkl.
    total = float(jnp.sum(jnp.linalg.norm(mkl_sol.group_weights(), axis=(1, 2))))
    beta = mkl_sol.reg * total
    convex = 0.5 * mkl_sol.reg**2 * float(jnp.sum(mkl_sol.alpha**2)) + beta * total
    net, net_obj = _train_net(family, gates, jnp.asarray(x), jnp.asarray(y), beta, net_steps,
                              net_lr, kn)  # fmt: skip
    net_pred_test = np.asarray(jax.vmap(net)(jnp.asarray(xt)))

    def scores(sol):
        return {
            "train": _metric(task, np.asarray(sol.predict()), y),
            "test": _metric(task, np.asarray(sol.predict(jnp.asarray(xt))), yt),
        }

    j_ntk, j_mkl = float(ntk_sol.objective[-1]), float(mkl_same.objective[-1])
    return {
        "name": data.name,
        "task": task,
        "metric": "accuracy" if task == "classification" else "mse",
        "n_train": int(x.shape[0]),
        "n_test": int(xt.shape[0]),
        "dim": int(x.shape[1] - 1),
        "outputs": int(y.shape[1]),
        "num_gates": int(num_gates),
        "num_patterns": family.num_patterns,
        "ntk_weight_stderr_max": float(jnp.max(stderr)),
        "ntk_vs_infinite": ntk_vs_inf,
        "regs": regs,
        "cv_mse_ntk": cv_ntk,
        "cv_mse_mkl": cv_mkl,
        "reg_ntk": reg_ntk,
        "reg_mkl": reg_mkl,
        "objective_ntk": j_ntk,
        "objective_mkl": j_mkl,
        "objective_ratio": j_mkl / j_ntk,
        "mkl_gap": float(mkl_same.gap),
        "mkl_iterations": mkl_same.num_iterations,
        "mkl_result": as_record(mkl_same.result),
        "mkl_history": [float(v) for v in mkl_same.objective],
        "mkl_support": int(jnp.sum(mkl_sol.eta > 1e-6 * jnp.max(mkl_sol.eta))),
        "ntk": scores(ntk_sol),
        "mkl": scores(mkl_sol),
        "net": {
            "train": _metric(task, np.asarray(jax.vmap(net)(jnp.asarray(x))), y),
            "test": _metric(task, net_pred_test, yt),
        },
        "net_objective": net_obj,
        "convex_objective": convex,
        "net_over_convex": net_obj / convex,
        "seconds": time.perf_counter() - t0,
    }


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table of [`ntkode.mkl_study`][] results, with where the NTK loses."""
    head = (
        f"{'data':<14}{'n':>5}{'d':>4}{'k':>3}{'pat':>6}{'J_NTK':>10}{'J_MKL':>10}{'ratio':>7}"
        f"{'gap':>9}  {'metric':<9}{'NTK':>8}{'MKL':>8}{'net':>8}{'net/cvx':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['name']:<14}{r['n_train']:>5}{r['dim']:>4}{r['outputs']:>3}"
            f"{r['num_patterns']:>6}{r['objective_ntk']:>10.4g}{r['objective_mkl']:>10.4g}"
            f"{r['objective_ratio']:>7.3f}{r['mkl_gap']:>9.1e}  {r['metric']:<9}"
            f"{r['ntk']['test']:>8.4f}{r['mkl']['test']:>8.4f}{r['net']['test']:>8.4f}"
            f"{r['net_over_convex']:>8.3f}"
        )
    lines.append("")
    for r in results:
        loss = 100 * (1 - r["objective_ratio"])
        sign = 1 if r["metric"] == "accuracy" else -1  # higher accuracy / lower MSE is better
        delta = sign * (r["mkl"]["test"] - r["ntk"]["test"])
        verdict = "NTK loses" if delta > 0 else ("tie" if delta == 0 else "NTK wins")
        lines.append(
            f"{r['name']}: the optimal MKL kernel lowers the training objective by {loss:.1f}% "
            f"at the NTK's λ; test {r['metric']}: NTK {r['ntk']['test']:.4f} vs MKL "
            f"{r['mkl']['test']:.4f} ({verdict} by {abs(delta):.4f})."
        )
    return "\n".join(lines)


def plot_mkl_study(results: Sequence[dict], path) -> None:
    """Figure: reweighting objective per iteration (relative to the NTK's), test scores."""
    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        hist = np.asarray(r["mkl_history"]) / r["objective_ntk"]
        a1.plot(np.arange(len(hist)), hist, label=r["name"])
    a1.set_xlabel("reweighting iteration")
    a1.set_ylabel("J(η_t) / J(η_NTK)  (same λ)")
    a1.set_title("Iterative reweighting from the NTK weights")
    a1.legend(fontsize=8)
    width = 0.27
    idx = np.arange(len(results))
    for i, method in enumerate(("ntk", "mkl", "net")):
        a2.bar(idx + (i - 1) * width, [r[method]["test"] for r in results], width, label=method)
    a2.set_xticks(idx, [f"{r['name']}\n({r['metric']})" for r in results], fontsize=8)
    a2.set_title("Test score (accuracy ↑, regression: MSE ↓)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mkl_study(
    names: Sequence[str] | None = None,
    *,
    quick: bool = False,
    out=None,
    seed: int = 0,
    progress: Callable[[str], None] | None = print,
    resume: bool | None = None,
    **kwargs,
) -> list[dict]:
    """Run [`ntkode.mkl_compare`][] on scikit-learn's bundled data sets (**uci-small**).

    **Arguments:**

    - `names`: data sets from `ntkode.datasets.uci` (default: all five; with `quick`: iris
      and wine). Names given explicitly are all run, `quick` or not.
    - `quick`: small settings for a check under a minute (100 gates, 2 folds, two ridge
      values, short reweighting and training).
    - `out`: a directory; `results.json` records the settings and is rewritten after every
      data set (see `ntkode/studies/_run.py`), and `mkl.png` is drawn at the end. Rerun with
      the same settings, finished data sets are read back instead of recomputed
      (`resume=None`: when the settings match; `True`: refuse other settings; `False`:
      recompute everything).
    - `seed`: seeds splits, gates, folds and networks. `progress`: a callable for messages.
    - `**kwargs`: passed to `mkl_compare` (they override the quick settings).

    **Returns:** the list of result dicts.
    """
    from ...datasets import uci

    if names is None:
        names = ["iris", "wine"] if quick else list(_ALL)
    settings: dict = {}
    if quick:
        settings = dict(num_gates=100, rel_regs=(1e-2, 1e-1), folds=2, cv_iter=10,
                        max_iter=60, net_steps=300)  # fmt: skip
    settings.update(kwargs)
    defaults = {
        k: v.default
        for k, v in inspect.signature(mkl_compare).parameters.items()
        if v.default is not inspect.Parameter.empty and k != "seed"
    }
    used = {"names": list(names), "quick": quick, "seed": seed, **defaults, **settings}
    _check_settings({**defaults, **settings})
    say = progress or (lambda s: None)
    record = StudyRecord(out, "mkl", used, parts="results", key=lambda r: r["name"],
                         resume=resume, log=say)  # fmt: skip
    for name in names:
        if name in record:
            continue
        say(f"[mkl] {name} ...")
        data = uci(name, seed=seed)
        res = mkl_compare(data, seed=seed, **settings)
        record.put(name, res)
        if progress:
            progress(
                f"[mkl] {name}: {res['num_patterns']} patterns, ‖K_NTK − K_∞‖/‖K_∞‖ = "
                f"{res['ntk_vs_infinite']:.3f}, J_MKL/J_NTK = {res['objective_ratio']:.3f}, "
                f"test {res['metric']} NTK {res['ntk']['test']:.4f} MKL "
                f"{res['mkl']['test']:.4f} net {res['net']['test']:.4f} "
                f"({res['seconds']:.1f} s single-shot)"
            )
    results = record.values()
    if out is not None and results:
        plot_mkl_study(results, Path(out) / "mkl.png")
    record.finish()
    return results


def _check_settings(s: dict) -> None:
    """Sentences for settings the study cannot run with (before any data set is loaded)."""
    folds, gates = s["folds"], s["num_gates"]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(
            f"`folds` must be an integer of at least 2 (cross-validation holds one fold out "
            f"and fits on the others), got {folds!r}."
        )
    if isinstance(gates, bool) or not isinstance(gates, int) or gates < 1:
        raise ValueError(f"`num_gates` must be a positive integer, got {gates!r}.")
    if not s["rel_regs"]:
        raise ValueError("`rel_regs` is empty: give at least one ridge value to cross-validate.")
