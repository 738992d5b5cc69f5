"""Figures of the floor study, drawn from its `results.json` record alone."""

import os
from typing import Any

import numpy as np

from ..._plot import pyplot, save

_LABELS = {
    "point": "point-sampled NTK",
    "mean_kernel": "window-mean kernel",
    "mean_jacobian": "window-mean Jacobian",
}


def _label(name: str) -> str:
    if name.startswith("soft_"):
        return f"soft gates, β = {name[5:]}"
    return _LABELS.get(name, name)


def _truth_band(ax, result, key="uncertainty_train") -> None:
    value = result["truth"][key]
    ax.axhline(value, color="k", ls="--", lw=1, label=f"truth's uncertainty ({value:.2%})")


def _percent_log(ax) -> None:
    """Label a logarithmic error axis in percent at 1, 2 and 5 of each decade (readable where
    the data span less than a decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _binned(t, values, bins: int):
    """Means of `values` over `bins` equal bins of `t` (the bins' centres and means)."""
    t, values = np.asarray(t, float), np.asarray(values, float)
    edges = np.linspace(t[0], t[-1], bins + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    total = np.bincount(which, values, minlength=bins)
    ok = count > 0
    return 0.5 * (edges[1:] + edges[:-1])[ok], total[ok] / count[ok]


def plot_flips(result: dict[str, Any], path: str) -> None:
    """Flip rate vs time per layer and sampling interval; flips vs interval in the fine window."""
    plt = pyplot()
    pats = result["patterns"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(1.7, 1))
    styles = ["-", "--", ":"]
    bins = 50
    for j, (dt, rec) in enumerate(pats["flip_rate_vs_time"].items()):
        for layer, rate in enumerate(rec["layers"]):
            tb, rb = _binned(rec["t"], rate, bins)
            ax.semilogy(
                tb, rb, styles[j % 3], color=f"C{layer}", lw=1.6 - 0.3 * j,
                label=f"layer {layer + 1}, δ = {dt}",
            )  # fmt: skip
    T = result["settings"]["t_end"]
    ax.set(
        xlabel="training time t (gradient-descent steps of size η)",
        ylabel="pairs flipping per unit time (fraction)",
        title=f"ReLU sine: pairs whose sign flips (means over bins of {T / bins:g})",
    )
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 12)  # room above the data for the legend
    ax.legend(ncol=3, loc="upper center")
    lags = sorted(pats["fine_window_flip_rate"], key=float)
    x = [float(k) for k in lags]
    for layer in range(len(pats["fine_window_flip_rate"][lags[0]])):
        y = [pats["fine_window_flip_rate"][k][layer] for k in lags]
        bx.loglog(x, y, "o-", color=f"C{layer}", label=f"layer {layer + 1}")
    bx.set_xticks(x)
    bx.set_xticklabels([f"{v:.3g}" for v in x])
    bx.minorticks_off()
    a, b = pats["fine_window"]
    bx.set(
        xlabel="sampling interval δ (time units)",
        ylabel="flip rate (fraction per unit time)",
        title=f"flips counted in t ∈ [{a:g}, {b:g}] vs δ",
    )
    bx.text(
        0.03, 0.04, "crossings: flat in δ\nchattering: grows as δ → 0",
        transform=bx.transAxes, fontsize=7.5, va="bottom",
    )  # fmt: skip
    bx.legend()
    fig.tight_layout()
    save(fig, path)


def _span(values) -> tuple[float, float]:
    lo, hi = (float(np.min(values)), float(np.max(values))) if len(values) else (-1.0, 1.0)
    pad = 0.1 * max(hi - lo, 1.0)
    return min(lo, 0.0) - pad, max(hi, 0.0) + pad


def plot_kernel_motion(result: dict[str, Any], path: str) -> None:
    """Kernel jump vs drift over time; change vs lag; NTK velocity excess over time."""
    plt = pyplot()
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.6))
    km = result["kernel_motion"]
    ax.semilogy(km["t"], km["jump"], "o-", ms=3, label=f"jump over δ = {km['lag_delta']:g}")
    ax.semilogy(
        km["t"], km["drift"], "s-", ms=3,
        label=f"drift over Δ = {km['lag_drift']:g}, scaled to δ",
    )  # fmt: skip
    ax.set(
        xlabel="training time t",
        ylabel="‖Θ(t+δ) − Θ(t)‖ / ‖Θ(t)‖",
        title="ReLU: the NTK jumps more than it drifts",
    )
    ax.legend()
    jl = result["jump_vs_lag"]
    lag, change = np.asarray(jl["lag"]), np.asarray(jl["change"])
    bx.loglog(lag, change, "o-", label="measured (mean of 5 starts)")
    if lag.size:
        k = int(np.argmax(lag))
        bx.loglog(lag, change[k] * lag / lag[k], "k:", label="∝ lag (a differentiable path)")
    bx.set(
        xlabel="lag (time units)",
        ylabel="relative kernel change",
        title="kernel change vs lag",
    )
    bx.legend()
    ve = result["velocity_excess"]
    te, ex = np.asarray(ve["t"]), 100 * np.asarray(ve["excess"])
    ok = np.asarray(ve["reliable"], bool)
    cx.plot(te[ok], ex[ok], "o-", ms=3, color="C3", label="windows where the outputs move")
    if (~ok).any():
        cx.plot(te[~ok], np.clip(ex[~ok], *_span(ex[ok])), "o", ms=3, mfc="none", color="0.5",
                label="outputs barely move (ratio ill-defined, clipped)")  # fmt: skip
        cx.legend(loc="upper left")
    cx.set_ylim(*_span(ex[ok]))
    cx.axhline(0.0, color="k", lw=0.8)
    cx.set(
        xlabel="training time t (window centre)",
        ylabel="⟨∫ −ηΘ∇L dt, Δu⟩ / ‖Δu‖² − 1  (%)",
        title="NTK velocity integrated over windows of 1,\nprojected on the outputs' motion",
    )
    fig.tight_layout()
    save(fig, path)


def plot_error_vs_time(result: dict[str, Any], path: str) -> None:
    """Point-sampled surrogate error over time per G, with the truth's uncertainty over time."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    unc = result["truth"]["uncertainty_vs_time"]
    for ax, part in zip(axes, ("train", "test"), strict=True):
        rows = result["grids"]["point"]
        for i, G in enumerate(sorted(rows, key=int)):
            c = rows[G]["error_vs_time"]
            colour = plt.cm.plasma(0.85 * i / max(len(rows) - 1, 1))
            ax.semilogy(c["t"][1:], c[part][1:], color=colour,
                        label=f"G = {G} ({rows[G][part + '_error']:.2%})")  # fmt: skip
        ax.semilogy(unc["t"][1:], unc[part][1:], "k--", lw=1.2,
                    label=f"truth at two rtols ({max(unc[part]):.2%})")  # fmt: skip
        _percent_log(ax)
        star = "" if part == "train" else "*"
        ax.set(
            xlabel="training time t",
            ylabel=f"‖u{star}_sur(t) − u{star}_true(t)‖ / ‖u{star}(0) − Y{star}‖",
            title=f"ReLU sine, {part} outputs: point-sampled grids vs truth",
        )
        ax.legend(loc="lower right")
    fig.tight_layout()
    save(fig, path)


def plot_sweep(result: dict[str, Any], path: str) -> None:
    """G = 8 error, truth uncertainty, flip rate and velocity excess against β."""
    plt = pyplot()
    sweep = result["sweep"]
    names = list(sweep)
    finite = [float(n) for n in names if n != "inf"]
    top = max(finite) * 4 if finite else 1.0
    x = [top if n == "inf" else float(n) for n in names]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
    sizes = sorted(sweep[names[0]]["errors"], key=int)
    for i, G in enumerate(sizes):
        ax.loglog(x, [sweep[n]["errors"][G]["train_error"] for n in names], "os"[i % 2] + "-",
                  color=f"C{i}", label=f"G = {G} grid, train")  # fmt: skip
    ax.loglog(x, [sweep[n]["g8_test_error"] for n in names], "o--", color="C0", lw=1,
              mfc="none", label="G = 8 grid, test")  # fmt: skip
    ax.loglog(x, [sweep[n]["uncertainty_train"] for n in names], "k^:",
              label="truth at two rtols, train")  # fmt: skip
    centred = " − log 2/β" if result["settings"]["centred"] else ""
    _percent_log(ax)
    ax.set(
        xlabel="gate sharpness β",
        ylabel="max relative train / test trajectory error",
        title=f"softplus(βx)/β{centred} → ReLU: point-sampled grids",
    )
    bx.semilogx(x, [100 * sweep[n]["velocity_excess"] for n in names], "o-", color="C3",
                label="NTK velocity excess (%)")  # fmt: skip
    bx.set(xlabel="gate sharpness β", ylabel="velocity excess (%)",
           title="NTK velocity vs the outputs' motion")  # fmt: skip
    rx = bx.twinx()
    rx.grid(False)
    layers = len(sweep[names[0]]["flip_rate"])
    for layer in range(layers):
        rx.semilogx(x, [sweep[n]["flip_rate"][layer] for n in names], "s:", color=f"C{layer + 4}",
                    label=f"flip rate, layer {layer + 1}")  # fmt: skip
    rx.set_ylabel(f"pairs flipping per unit time (δ = {2 * result['settings']['sample_dt']:g})")
    for a in (ax, bx):
        a.set_xticks(x)
        a.set_xticklabels(["∞ (ReLU)" if n == "inf" else n for n in names])
        a.minorticks_off()
    ax.legend()
    h1, l1 = bx.get_legend_handles_labels()
    h2, l2 = rx.get_legend_handles_labels()
    bx.legend(h1 + h2, l1 + l2, loc="upper left")
    fig.tight_layout()
    save(fig, path)


def plot_remedies(result: dict[str, Any], path: str) -> None:
    """Error vs G per kernel construction, and error vs time at G = 8, on ReLU sine."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    grids = result["grids"]
    for i, (name, rows) in enumerate(grids.items()):
        G = sorted(rows, key=int)
        ax.loglog([int(g) for g in G], [rows[g]["train_error"] for g in G], "o-",
                  color=f"C{i}", label=_label(name))  # fmt: skip
        if "8" in rows:
            c = rows["8"]["error_vs_time"]
            bx.semilogy(c["t"][1:], c["train"][1:], color=f"C{i}",
                        label=f"{_label(name)} ({rows['8']['train_error']:.2%})")  # fmt: skip
    _truth_band(ax, result)
    unc = result["truth"]["uncertainty_vs_time"]
    bx.semilogy(unc["t"][1:], unc["train"][1:], "k--", lw=1.2, label="truth at two rtols")
    sizes = sorted({int(g) for rows in grids.values() for g in rows})
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(g) for g in sizes])
    ax.minorticks_off()
    _percent_log(ax)
    _percent_log(bx)
    ax.set(xlabel="grid size G", ylabel="max relative train error",
           title="ReLU sine: kernel constructions vs G")  # fmt: skip
    bx.set(xlabel="training time t", ylabel="relative train error",
           title="G = 8: error over time")  # fmt: skip
    ax.legend()
    bx.legend(loc="lower right")
    fig.tight_layout()
    save(fig, path)


FIGURES = {
    "flips.png": plot_flips,
    "kernel_motion.png": plot_kernel_motion,
    "error_vs_time.png": plot_error_vs_time,
    "error_vs_beta.png": plot_sweep,
    "remedies.png": plot_remedies,
}


def plot_all(result: dict[str, Any], out: str) -> list[str]:
    """Every figure of the study into folder `out`; returns their paths."""
    paths = []
    for name, fn in FIGURES.items():
        path = os.path.join(out, name)
        fn(result, path)
        paths.append(path)
    return paths


__all__ = ["FIGURES", "plot_all"]
