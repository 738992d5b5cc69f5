r"""The floor study: why point-sampled kernel grids stop improving on ReLU networks.

On **sine** a time-scheduled grid of NTKs sampled on the true ReLU path stops improving near
4–5% train error from G ≈ 8 on, while with softplus the same construction keeps converging.
This study measures, along the true flow, what is different:

1. **Patterns** (`_patterns.py`): the fraction of (input, unit) pairs whose activation sign
   flips per unit time, at several sampling intervals. Flips that keep growing as the sampling
   refines, by pairs whose pre-activation stays pinned near zero, are chattering on a kink.
2. **Kernel motion** (`_kernels.py`): $\|\Theta(t+\delta) - \Theta(t)\|/\|\Theta(t)\|$ at small
   $\delta$ against the steady drift over a longer lag, and the jump as a function of the lag.
3. **Velocity excess** (`_measures.py`): whether the NTK velocity $-\eta\Theta\nabla_u L$ at
   the saved states integrates to the displacement the outputs actually made.
4. **Surrogate errors** against the truth and the truth's own uncertainty (the true flow at
   two tolerances), over time and over G; a sweep of $\operatorname{softplus}(\beta x)/\beta$
   from smooth to ReLU; and three kernel constructions tried as remedies: the window-mean
   kernel, the window-mean Jacobian (the relaxed-gate kernel of a Filippov sliding mode) and
   soft gates (the softplus-β NTK at the ReLU weights).
"""

import inspect
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ... import KernelGrid
from .._problems import SoftplusBeta, sine_problem
from .._run import StudyRecord
from ._kernels import RunKernels, kernel_motion, relative_change
from ._measures import on_grid, save_times, scheduled_error, solve_truths, velocity_excess
from ._patterns import pinned_ratio, record_patterns

DEFAULT_BETAS = (1.0, 4.0, 16.0, 64.0, math.inf)
#: The parts of the record measured on the ReLU truth (stages 1–4).
RELU_KEYS = ("truth", "patterns", "kernel_motion", "jump_vs_lag", "velocity_excess", "grids")

#: `--quick`: the whole pipeline on a small problem (well under a minute on 2 cores).
QUICK: dict[str, Any] = dict(
    width=64,
    n_train=64,
    n_test=64,
    dim=4,
    t_end=10.0,
    sample_dt=0.05,
    grid_sizes=(2, 8),
    remedy_sizes=(8,),
    betas=(4.0, math.inf),
    soft_betas=(64.0,),
    window=0.25,
)


def _beta_name(beta: float) -> str:
    return "inf" if math.isinf(beta) else f"{beta:g}"


def floor_study(
    *,
    width: int = 512,
    depth: int = 2,
    n_train: int = 256,
    n_test: int = 256,
    dim: int = 8,
    t_end: float = 50.0,
    seed: int = 0,
    rtol: float = 1e-5,
    loose: float = 10.0,
    sample_dt: float = 0.1,
    fine_factor: int = 8,
    grid_sizes: Sequence[int] = (2, 4, 8, 16, 32),
    remedy_sizes: Sequence[int] | None = None,
    window: float = 0.5,
    betas: Sequence[float] = DEFAULT_BETAS,
    centred: bool = True,
    soft_betas: Sequence[float] = (64.0, 256.0),
    chatter_flips: int = 4,
    quick: bool = False,
    out: str | None = "floor-out",
    resume: bool | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    r"""Measure why kernel grids hit a floor on ReLU networks, on **sine**.

    **Arguments:**

    - `width`, `depth`, `n_train`, `n_test`, `dim`, `t_end`, `seed`: the **sine** problem
      ([`ntkode.sine_problem`][]; defaults: MLP 8→512→512→1, 256 points, $t \in [0, 50]$).
    - `rtol`: tolerance of the reference true flow (`atol = rtol/100`); `loose`: the factor of
      the second true flow's tolerance. Their difference is the truth's uncertainty.
    - `sample_dt`: spacing of the saved states of the ReLU truth (patterns, kernels,
      velocities); the sweep saves every `2·sample_dt` (each saved state costs about two
      evaluations of the vector field).
    - `fine_factor`: a window of one time unit from $0.4\,t_\text{end}$ on is also sampled
      `fine_factor` times more finely, to count flips and kernel jumps at short lags.
    - `grid_sizes`: G of the point-sampled, time-scheduled, linearly interpolated grids
      (uniform node times); `remedy_sizes`: G of the window-averaged grids (default
      `grid_sizes`); `window`: their half-width in time (the end nodes' windows are
      one-sided, cut at 0 and `t_end`).
    - `betas`: the sweep, $\operatorname{softplus}(\beta x)/\beta$ (`inf` = ReLU), each with its
      own true flows and point-sampled grids of G = 8 and the largest of `grid_sizes`;
      `centred`: shift the family to pass through zero
      (see [`ntkode.studies.SoftplusBeta`][]; uncentred β = 1 is ~100× slower to integrate).
    - `soft_betas`: β of the soft-gated kernels at the ReLU weights.
    - `chatter_flips`: a pair flipping at least this often over the run counts as chattering.
    - `quick`: the small problem of `QUICK` (a smoke test of the pipeline).
    - `out`: folder for `results.json` and the figures (`None`: write nothing).
    - `resume`: a rerun into the same `out` with the same settings skips what the record
      holds: the ReLU stages 1–4 (one part; its weights are not saved) and each finished β of
      the sweep (`None`, the default; `True` refuses other settings, `False` starts afresh;
      see [`ntkode.studies.StudyRecord`][]).
    - `log`: where the one-line-per-stage progress goes.

    **Returns:** the record written to `results.json` (see the keys there).
    """
    cfg: dict[str, Any] = dict(
        width=width, depth=depth, n_train=n_train, n_test=n_test, dim=dim, t_end=t_end,
        sample_dt=sample_dt, grid_sizes=tuple(grid_sizes), betas=tuple(betas),
        soft_betas=tuple(soft_betas), window=window,
        remedy_sizes=tuple(grid_sizes if remedy_sizes is None else remedy_sizes),
    )  # fmt: skip
    if quick:
        given = dict(cfg, remedy_sizes=None if remedy_sizes is None else tuple(remedy_sizes))
        defaults = {k: p.default for k, p in inspect.signature(floor_study).parameters.items()}
        changed = [k for k in QUICK if given[k] != _as_tuple(defaults[k])]
        if changed:
            names = ", ".join(f"`{k}`" for k in changed)
            raise ValueError(
                f"`quick` sets {names} itself; drop {'it' if len(changed) == 1 else 'them'}, "
                "or drop `quick` (--quick on the command line) to run your sizes."
            )
        cfg.update(QUICK)
    window = float(cfg["window"])
    _check(cfg, rtol, loose, fine_factor, window, chatter_flips)
    T, dt = float(cfg["t_end"]), float(cfg["sample_dt"])
    sizes, remedy = [int(g) for g in cfg["grid_sizes"]], [int(g) for g in cfg["remedy_sizes"]]
    if 8 not in sizes:
        sizes = sorted({*sizes, 8})  # the headline numbers are at G = 8
    size = {k: cfg[k] for k in ("width", "depth", "n_train", "n_test", "dim")}
    clock = _Clock(log)
    cpu_start = time.process_time()
    result: dict[str, Any] = {
        "settings": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "betas": [_beta_name(b) for b in cfg["betas"]],
            "seed": seed, "rtol": rtol, "loose_rtol": loose * rtol, "fine_factor": fine_factor,
            "centred": centred, "chatter_flips": chatter_flips,
            "quick": quick, "dtype": str(np.dtype(jax.numpy.result_type(float))),
            "interpolation": "linear", "schedule": "time",
        },
        "seconds": {},
    }  # fmt: skip
    record = StudyRecord(out, "floor", result["settings"], resume=resume, log=log)

    def checkpoint():
        result["seconds"]["total"] = clock.total()
        result["seconds"]["cpu"] = time.process_time() - cpu_start
        result["load_average"] = list(os.getloadavg())
        record.update(**{k: v for k, v in result.items() if k != "settings"})

    relu = sine_problem(**size, t_end=T, seed=seed, activation="relu")
    log(
        f"floor study on sine: MLP {size['dim']}->{size['width']}x{size['depth']}->1, "
        f"n_train={size['n_train']}, t in [0, {T:g}], {result['settings']['dtype']}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    # [1–4] The ReLU truth and everything measured on it: one part of the record.
    nodes = {G: np.linspace(0.0, T, G) for G in sorted({*sizes, *remedy})}
    if "relu" in record:
        part = record.get("relu")
        log("[1–4/6] ReLU truth, patterns, kernel motion, grids: resumed from the record")
    else:
        part = _relu_stages(relu, result, cfg, nodes, sizes, remedy, T, dt, rtol, loose,
                            fine_factor, window, chatter_flips, clock, checkpoint, log)  # fmt: skip
        record.put("relu", part)
        part = record.get("relu")  # as it reads back from the record, resumed or not
    result.update({k: part[k] for k in RELU_KEYS})
    truth, grids = result["truth"], result["grids"]
    checkpoint()

    # [5] The sweep from smooth to ReLU, at G = 8 and at the largest G (where a floor shows).
    sweep_sizes = sorted({8, max(sizes)})
    sweep: dict[str, dict[str, Any]] = {}
    for beta in cfg["betas"]:
        name = _beta_name(beta)
        if math.isinf(beta):
            sweep[name] = {
                "g8_train_error": grids["point"]["8"]["train_error"],
                "g8_test_error": grids["point"]["8"]["test_error"],
                "errors": {
                    str(G): {k: grids["point"][str(G)][k] for k in ("train_error", "test_error")}
                    for G in sweep_sizes
                },
                "uncertainty_train": truth["uncertainty_train"],
                "uncertainty_test": truth["uncertainty_test"],
                "steps": truth["reference"]["steps"],
                "steps_loose": truth["loose"]["steps"],
                "success": truth["reference"]["success"] and truth["loose"]["success"],
                "flip_rate": result["patterns"]["mean_flip_rate"][f"{2 * dt:g}"],
                "velocity_excess": part["coarse_velocity_excess"],
            }
        elif f"beta_{name}" in record:
            sweep[name] = record.get(f"beta_{name}")
            log(f"  β={name}: resumed from the record")
        else:
            sweep[name] = _sweep_point(
                SoftplusBeta(beta, centred=centred), size, T, seed, 2 * dt,
                {G: nodes[G] for G in sweep_sizes}, rtol, loose,
                lambda m, b=name: log(f"  β={b}:{m}"),
            )  # fmt: skip
            record.put(f"beta_{name}", sweep[name])
            sweep[name] = record.get(f"beta_{name}")
        s = sweep[name]
        log(
            f"    β={name}: train error "
            + ", ".join(f"{e['train_error']:.2%} (G={g})" for g, e in s["errors"].items())
            + f" (truth ±{s['uncertainty_train']:.2%}), flip rate {_layers(s['flip_rate'])}, "
            f"velocity excess {s['velocity_excess']:+.2%}, {s['steps']} steps"
        )
        result["sweep"] = sweep
        checkpoint()
    clock.stage("5/6 sweep softplus(βx)/β → ReLU", f"β in {list(sweep)}")

    # [6] What the numbers say, and the figures.
    result["summary"] = summarise(result)
    result["seconds"].update(clock.seconds)
    checkpoint()
    if out:
        from ._figures import plot_all

        result["figures"] = plot_all(result, out)
    clock.stage("6/6 summary and figures", f"wrote {out or 'nothing'}")
    result["seconds"].update(clock.seconds)
    checkpoint()
    record.finish()
    return result


def _relu_stages(
    relu,
    result,
    cfg,
    nodes,
    sizes,
    remedy,
    T,
    dt,
    rtol,
    loose,
    fine_factor,
    window,
    chatter_flips,
    clock,
    checkpoint,
    log,
) -> dict[str, Any]:
    """Stages 1–4 on the ReLU truth (one resumable part: its weights are too large to save).

    Writes `truth`, `patterns`, `kernel_motion`, `jump_vs_lag`, `velocity_excess` and `grids`
    into `result` as they finish and returns them, with the velocity excess at the sweep's
    sampling (for the sweep's β = ∞ entry)."""
    # [1] The ReLU truth, twice; states saved on the sample grid, the nodes and a fine window.
    fine_start = round(0.4 * T / dt) * dt
    fine = fine_start + (dt / fine_factor) * np.arange(int(round(1.0 / dt)) * fine_factor + 1)
    fine = fine[fine <= T]
    ts = save_times(T, dt, np.concatenate([*nodes.values(), fine]))
    ref, _, truth = solve_truths(relu, ts, rtol, loose, log)
    result["truth"] = truth
    clock.stage(
        "1/6 ReLU true flows",
        f"rtol {rtol:g}: {truth['reference']['steps']} steps; {loose * rtol:g}: "
        f"{truth['loose']['steps']} steps; uncertainty {truth['uncertainty_train']:.2%} train",
    )
    checkpoint()

    # [2] Activation patterns: flips per unit time at several sampling intervals.
    t = np.asarray(ref.t, float)
    base = on_grid(t, np.linspace(0.0, T, int(round(T / dt)) + 1))
    take = lambda idx: jax.tree.map(lambda a: a[idx], ref.weights)
    pats = record_patterns(relu.model, take(base), t[base], relu.data.x_train)
    strides = [s for s in (1, 2, 8) if s < base.size // 2]
    rates = {}
    for s in strides:
        mid, per_layer = pats.flip_rate(s)
        rates[f"{s * dt:g}"] = {"t": mid, "layers": per_layer}
    fine_idx = on_grid(t, fine)
    fine_pats = record_patterns(relu.model, take(fine_idx), t[fine_idx], relu.data.x_train)
    fine_rates = {}
    for s in (1, 2, 4, fine_factor):
        if s <= fine_factor:
            _, per_layer = fine_pats.flip_rate(s)
            fine_rates[f"{s * dt / fine_factor:g}"] = [float(np.mean(r)) for r in per_layer]
    counts = pats.pair_flips()
    chatter = [c >= chatter_flips for c in counts]
    sub = base[:: max(1, base.size // 50)]
    pinned = pinned_ratio(relu.model, take(sub), relu.data.x_train, chatter)
    result["patterns"] = {
        "flip_rate_vs_time": rates,
        "mean_flip_rate": {k: [float(np.mean(r)) for r in v["layers"]] for k, v in rates.items()},
        "fine_window": [float(fine[0]), float(fine[-1])],
        "fine_window_flip_rate": fine_rates,
        "pairs_flipping": [float(np.mean(c >= 1)) for c in counts],
        "pairs_chattering": [float(np.mean(c)) for c in chatter],
        "flips_by_chattering_pairs": [
            float(c[m].sum() / max(c.sum(), 1)) for c, m in zip(counts, chatter, strict=True)
        ],
        "pinned_ratio": pinned,
    }
    clock.stage(
        "2/6 activation patterns",
        "flip rate per unit time at δ="
        + ", ".join(f"{k}: {_layers(v)}" for k, v in result["patterns"]["mean_flip_rate"].items())
        + f"; chattering pairs {_layers(result['patterns']['pairs_chattering'])}",
    )
    checkpoint()

    # [3] Kernel motion and the velocity excess.
    kernels = RunKernels(relu.model, relu.data, ref.weights, t)
    lag = T / 25
    motion = kernel_motion(kernels, np.arange(0.0, T - lag + 1e-9, lag), dt, lag)
    starts = fine_start + dt * np.arange(5)
    lags = [dt / fine_factor * k for k in (1, 2, 4)] + [dt * k for k in (1, 2, 5, 10, 20, 50)]
    by_lag = []
    for d in lags:
        if fine_start + 4 * dt + d > T:
            continue
        pairs = [(kernels.index(s), kernels.index(s + d)) for s in starts]
        change = [relative_change(kernels.train(i), kernels.train(j)) for i, j in pairs]
        by_lag.append((float(np.mean([t[j] - t[i] for i, j in pairs])), float(np.mean(change))))
    excess = velocity_excess(t[base], ref.train[base], ref.train_dot[base], 1.0, t_min=T / 10)
    # The same at the sweep's sampling, for the β = ∞ entry of the sweep.
    b2 = base[::2]
    coarse = velocity_excess(t[b2], ref.train[b2], ref.train_dot[b2], 1.0, t_min=T / 10)
    result["kernel_motion"] = {**motion, "lag_delta": dt, "lag_drift": lag}
    result["jump_vs_lag"] = {"lag": [a for a, _ in by_lag], "change": [b for _, b in by_lag]}
    result["velocity_excess"] = excess
    clock.stage(
        "3/6 kernel motion",
        f"median jump at δ={dt:g}: {np.median(motion['jump']):.2%} vs drift "
        f"{np.median(motion['drift']):.2%} per δ; median velocity excess "
        f"{excess['median']:+.1%}",
    )
    checkpoint()

    # [4] Point-sampled grids, and the remedies, against the same truth.
    grids: dict[str, dict[str, Any]] = {}

    def add(name: str, G: int, kt, ks, kernel_seconds: float):
        start = time.perf_counter()
        row, curve = scheduled_error(relu, ref, nodes[G], np.stack(kt), np.stack(ks))
        # Kernel seconds of the two window averages are those of their shared windows.
        row["kernel_seconds"] = kernel_seconds
        row["solve_seconds"] = time.perf_counter() - start
        row["error_vs_time"] = curve
        grids.setdefault(name, {})[str(G)] = row

    for G in sizes:
        start = time.perf_counter()
        pts = [kernels.point(i) for i in on_grid(t, nodes[G])]
        add("point", G, [a for a, _ in pts], [b for _, b in pts], time.perf_counter() - start)
    soft_models = {b: RunKernels(relu.model, relu.data, ref.weights, t, soften=b) for b in
                   cfg["soft_betas"]}  # fmt: skip
    for b, km in soft_models.items():
        for G in sizes:
            start = time.perf_counter()
            pts = [km.point(i) for i in on_grid(t, nodes[G])]
            sec = time.perf_counter() - start
            add(f"soft_{_beta_name(b)}", G, [a for a, _ in pts], [c for _, c in pts], sec)
    for G in remedy:
        start = time.perf_counter()
        means = [kernels.window_means(kernels.window(s, window)) for s in nodes[G]]
        sec = time.perf_counter() - start
        for name in ("mean_kernel", "mean_jacobian"):
            add(name, G, [m[name][0] for m in means], [m[name][1] for m in means], sec)
    result["grids"] = grids
    clock.stage(
        "4/6 grids on the ReLU truth",
        "G=8 train error: "
        + ", ".join(f"{k} {v['8']['train_error']:.2%}" for k, v in grids.items() if "8" in v)
        + f" (truth ±{truth['uncertainty_train']:.2%})",
    )
    return {**{k: result[k] for k in RELU_KEYS}, "coarse_velocity_excess": coarse["median"]}


def _sweep_point(activation, size, T, seed, dt, nodes, rtol, loose, log) -> dict[str, Any]:
    """One β of the sweep: truths at two tolerances, grids of the sizes in `nodes` (G → node
    times; G = 8 among them), flips, velocity excess."""
    problem = sine_problem(**size, t_end=T, seed=seed, activation=activation)
    ts = save_times(T, dt, np.concatenate(list(nodes.values())))
    ref, _, truth = solve_truths(problem, ts, rtol, loose, log)
    errors = {}
    for G, times in nodes.items():
        grid = KernelGrid.from_solution(ref, times, problem.model, problem.data)
        row, _ = scheduled_error(problem, ref, times, grid.kernel_train, grid.kernel_test)
        errors[str(G)] = {k: row[k] for k in ("train_error", "test_error")}
    t = np.asarray(ref.t, float)
    base = on_grid(t, np.linspace(0.0, T, int(round(T / dt)) + 1))
    weights = jax.tree.map(lambda a: a[base], ref.weights)
    pats = record_patterns(problem.model, weights, t[base], problem.data.x_train)
    excess = velocity_excess(t[base], ref.train[base], ref.train_dot[base], 1.0, t_min=T / 10)
    return {
        "g8_train_error": errors["8"]["train_error"],
        "g8_test_error": errors["8"]["test_error"],
        "errors": errors,
        "uncertainty_train": truth["uncertainty_train"],
        "uncertainty_test": truth["uncertainty_test"],
        "steps": truth["reference"]["steps"],
        "steps_loose": truth["loose"]["steps"],
        "success": truth["reference"]["success"] and truth["loose"]["success"],
        "flip_rate": [float(np.mean(r)) for r in pats.flip_rate(1)[1]],
        "velocity_excess": excess["median"],
        "seconds": truth["reference"]["seconds"] + truth["loose"]["seconds"],
    }


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _layers(values: Sequence[float]) -> str:
    return "/".join(f"{v:.3g}" for v in values)


class _Clock:
    """Wall time per stage, printed as one line each (no progress bars in pipes)."""

    def __init__(self, log):
        self.log = log
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def stage(self, name: str, note: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now
        self.log(f"[{name}] {self.seconds[name]:.1f} s (load {os.getloadavg()[0]:.1f}): {note}")

    def total(self) -> float:
        return time.perf_counter() - self.start


def _check(cfg, rtol, loose, fine_factor, window, chatter_flips) -> None:
    for k in ("width", "depth", "n_train", "dim"):
        if int(cfg[k]) < 1:
            raise ValueError(f"`{k}` must be at least 1, got {cfg[k]}.")
    if int(cfg["n_test"]) < 1:
        raise ValueError("`n_test` must be at least 1: the study reports test errors too.")
    for k, v in (("t_end", cfg["t_end"]), ("sample_dt", cfg["sample_dt"]), ("rtol", rtol),
                 ("window", window)):  # fmt: skip
        if not v > 0:
            raise ValueError(f"`{k}` must be positive, got {v}.")
    if not loose > 1:
        raise ValueError(f"`loose` must exceed 1 (the second rtol is loose·rtol), got {loose}.")
    if int(fine_factor) < 1 or int(chatter_flips) < 1:
        raise ValueError("`fine_factor` and `chatter_flips` must be positive integers.")
    for k in ("grid_sizes", "remedy_sizes"):
        if not cfg[k] or any(int(g) < 2 for g in cfg[k]):
            raise ValueError(f"`{k}` must be grid sizes of at least 2, got {cfg[k]!r}.")
    if not cfg["betas"] or any(not b > 0 for b in cfg["betas"]):
        raise ValueError(f"`betas` must be positive (math.inf for ReLU), got {cfg['betas']!r}.")
    if any(not b > 0 or math.isinf(b) for b in cfg["soft_betas"]):
        raise ValueError(f"`soft_betas` must be positive and finite, got {cfg['soft_betas']!r}.")


def summarise(result: dict[str, Any]) -> list[str]:
    """The study's findings as sentences, each quoting the numbers it rests on."""
    from ._summary import sentences

    return sentences(result)


__all__ = ["DEFAULT_BETAS", "QUICK", "floor_study", "summarise"]
