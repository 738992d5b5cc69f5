"""The control study's table and figure (matplotlib through `ntkode._plot.pyplot`)."""

from typing import Any

import numpy as np

from ..._plot import pyplot
from ._summary import BASELINES, DESIGNED

LABELS = {
    "inverse_sharpness": "1.9 n/λ_max(Θ(s)) [cert.]",
    "designed": "designed η(s) [cert.]",
    "designed_uncertified": "designed η(s), free [uncert.]",
    "warmup_inverse_sharpness": "warm-up + 1.9 n/λ_max [uncert.]",
    "best_constant": "best constant (network search)",
    "best_certified_constant": "best certified constant",
    "cosine": "warm-up + cosine",
}
COLOURS = {
    "inverse_sharpness": "tab:blue",
    "designed": "tab:green",
    "designed_uncertified": "tab:olive",
    "warmup_inverse_sharpness": "tab:purple",
    "best_constant": "tab:red",
    "best_certified_constant": "tab:orange",
    "cosine": "tab:gray",
}


def _fmt(v: Any, spec: str = ".0f") -> str:
    if v is None:
        return "never"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec)


def _error(v: float) -> str:
    """A relative error, with the surrogate's blow-ups shown as such."""
    return f"{v:.2f}" if v < 100 else ("inf" if not np.isfinite(v) else ">100")


HEADER = (
    f"{'policy':<26} {'cert.':>5} {'steps net':>9} {'steps sur':>9} {'loss net':>9} "
    f"{'test net':>9} {'div.':>4} {'pred.err':>8} {'cert. held':>10}"
)


def format_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [HEADER, "-" * len(HEADER)]
    for name in (*DESIGNED, *BASELINES):
        r = s["policies"][name]
        lines.append(
            f"{name:<26} {_fmt(r['certified']):>5} {_fmt(r['steps_to_target_network']):>9} "
            f"{_fmt(r['steps_to_target_surrogate']):>9} "
            f"{r['final_train_loss_network']:>9.3g} {r['final_test_loss_network']:>9.3g} "
            f"{_fmt(r['diverged']):>4} {_error(r['prediction_error']):>8} "
            f"{r['certificate_fraction_held_network']:>10.2f}"
        )
    lines.append("")
    lines.append(
        f"{'constant η':>10} {'cert.':>5} {'steps net':>9} {'steps sur':>9} {'div. net/sur':>12}"
    )
    for row in s["constant_map"]:
        lines.append(
            f"{row['eta']:>10.3g} {_fmt(row['certified_on_every_seed']):>5} "
            f"{_fmt(row['steps_to_target_network']):>9} "
            f"{_fmt(row['steps_to_target_surrogate']):>9} "
            f"{_fmt(row['diverged']):>5}/{_fmt(row['diverged_surrogate'])}"
        )
    t, g = s["targets"], s["grid_search"]
    lam = t["catapult_lambda_max_over_n"]
    inv = s["policies"]["inverse_sharpness"]
    lines += [
        "",
        f"grid search: {g['network_runs']} network runs; best constant η = "
        f"{g['best_constant_eta']:.3g}; best certified constant η (largest certified until "
        "the target, per seed) = "
        + ", ".join(f"{v:.3g}" for v in g["best_certified_constant_eta"]),
        f"certified: {t['certified_policy']} / best certified constant = "
        f"{_fmt(t['certified_ratio'], '.2f')} (target ≤ 0.8)",
        f"prediction: max relative loss error of the surrogate, certified policies = "
        f"{t['prediction_error_certified']:.2f} (target ≤ 0.10)",
        f"  while above the target: {t['prediction_error_certified_above_target']:.2f}; "
        "on the effective time τ = Σ η (same reference kernels): "
        f"{_error(t['prediction_error_certified_time'])} (above the target "
        f"{_error(t['prediction_error_certified_time_above_target'])})",
        "  per certified policy, loss level / τ (above the target): "
        + "; ".join(
            f"{n} {_error(v['loss_level'])} / {_error(v['time'])} "
            f"({_error(v['loss_level_above_target'])} / {_error(v['time_above_target'])})"
            for n, v in t["prediction_error_by_certified_policy"].items()
        ),
        "  "
        "inverse_sharpness on a grid identified on its own run: "
        + "; ".join(
            f"{axis} {v['prediction_error']:.2f} "
            f"(above target {v['prediction_error_above_target']:.2f})"
            for axis, v in t["prediction_error_identified"].items()
        ),
        "  one step of the LPV model with the network's true NTK (inverse_sharpness, steps "
        + ", ".join(map(str, inv["sharpness_steps"][:-1]))
        + "): ‖r_lin‖/‖r_net‖ = "
        + ", ".join(
            f"{v:.3f}" for v in s["policies"]["inverse_sharpness"]["one_step_residual_ratio"]
        )
        + "; step error = "
        + ", ".join(f"{v:.3f}" for v in s["policies"]["inverse_sharpness"]["one_step_error"]),
        f"overall: {t['overall_policy']} / best constant = {_fmt(t['overall_ratio'], '.2f')} "
        "(ambition ≤ 0.67)",
        "catapult (best constant), λ_max/n on the network at steps "
        + ", ".join(f"{k}: {v:.1f}" for k, v in lam.items()),
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Loss, learning rate and stability per step for every policy; the constant-rate map."""
    plt = pyplot()
    s = result["summary"]
    seed = s["seeds"][0]
    curves = result["curves"][seed]
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 8.6))
    ax_loss, ax_eta, ax_stab, ax_map = axes.ravel()
    target = s["targets_by_seed"][0]
    for name in (*DESIGNED, *BASELINES):
        c = COLOURS[name]
        ln = curves[f"{name}.loss_network"]
        ls = curves[f"{name}.loss_surrogate"]
        ax_loss.semilogy(ln, color=c, label=LABELS[name])
        ax_loss.semilogy(np.where(np.isfinite(ls) & (ls < 1e3), ls, np.nan), color=c, ls="--", lw=1)
        eta = curves[f"{name}.eta"]
        ax_eta.plot(eta, color=c, label=LABELS[name])
        ax_stab.plot(curves[f"{name}.stability_network"], color=c, lw=1)
        row = s["policies"][name]
        ax_stab.plot(
            row["sharpness_steps"][:-1],
            [e * lam for e, lam in zip(
                eta[np.minimum(row["sharpness_steps"][:-1], len(eta) - 1)],
                row["lambda_max_over_n_network"][:-1], strict=True)],
            "o", color=c, ms=3.5,
        )  # fmt: skip
    ax_loss.axhline(target, color="k", lw=0.8, ls=":")
    ax_loss.set(
        xlabel="step k",
        ylabel="train loss (mean MSE)",
        title="(a) train loss: network — , surrogate - - ; target ⋯",
    )
    K = result["settings"]["steps"]
    loss0 = s["targets_by_seed"][0] / result["settings"]["target_ratio"]
    # The surrogate's blow-ups beyond its stability limit leave the frame (they are in the
    # record); the certified constant's longer run continues past K, so the frame is set by
    # the first K steps.
    lows = [
        np.nanmin(np.where(np.isfinite(v[: K + 1]) & (v[: K + 1] > 0), v[: K + 1], np.nan))
        for key, v in curves.items()
        if key.endswith((".loss_network", ".loss_surrogate"))
    ]
    ax_loss.set_ylim(0.5 * min(lows), 3 * loss0)
    for ax in (ax_loss, ax_eta, ax_stab):
        ax.set_xlim(0, K)
    ax_eta.set(
        xlabel="step k", ylabel="learning rate η_k", title="(b) learning rate used on the network"
    )
    ax_eta.set_ylim(bottom=0)
    ax_stab.axhline(2.0, color="k", lw=0.8, ls=":")
    ax_stab.set_ylim(0, 6)
    ax_stab.set(
        xlabel="step k",
        ylabel="η_k λ_max / n",
        title="(c) stability: grid's λ_max(Θ(s_k)) — , true NTK ●  (limit 2)",
    )
    cmap = s["constant_map"]
    eta = np.array([r["eta"] for r in cmap])

    def steps(key):
        return np.array([np.nan if r[key] is None else r[key] for r in cmap], float)

    net, sur = steps("steps_to_target_network"), steps("steps_to_target_surrogate")
    ax_map.plot(eta, net, "o-", color="tab:red", label="network")
    ax_map.plot(eta, sur, "s--", color="tab:blue", label="surrogate")
    never_n = np.isnan(net)
    never_s = np.isnan(sur)
    ax_map.plot(eta[never_n], np.full(never_n.sum(), K), "x", color="tab:red", ms=7)
    ax_map.plot(eta[never_s], np.full(never_s.sum(), K), "+", color="tab:blue", ms=9)
    cap = float(np.median(s["grid_search"]["best_certified_constant_eta"]))
    ax_map.axvline(cap, color="tab:orange", lw=0.9, ls=":", label="largest certified rate")
    ax_map.set_xscale("log")
    ax_map.set(
        xlabel="constant η",
        ylabel="steps to target (median over seeds)",
        title=f"(d) constant rates: ✕/+ = not reached in {K} steps",
    )
    ax_map.legend(loc="lower left")  # the top row holds the not-reached markers
    # One legend for the policies of (a)–(c), below the panels, so that it hides no data.
    handles, labels = ax_eta.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False)
    problem = s.get("problem", "sine")
    args = s.get(f"{problem}_problem", {})
    n_train = args.get("n_train", "?")
    fig.suptitle(
        f"Learning rates designed on the scheduled-NTK surrogate vs the network's own baselines: "
        f"{problem} (MLP width {args.get('width', '?')}, n = {n_train}, mean MSE), seed {seed}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


__all__ = ["HEADER", "format_table", "plot"]
