"""The floor study's findings as sentences, each quoting the numbers of `results.json` it uses.

Claims are conditional on the numbers: where a measurement does not show what the explanation
needs, the sentence says so instead of asserting it.
"""

import math
from typing import Any

import numpy as np


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def _layers(values) -> str:
    return " / ".join(f"{v:.3g}" for v in values)


def _percent_layers(values) -> str:
    return " / ".join(f"{100 * v:.3g}%" for v in values)


def sentences(result: dict[str, Any]) -> list[str]:
    """Sentences for the record `result` of [`ntkode.studies.floor_study`][]."""
    s = result["settings"]
    truth, grids, pats = result["truth"], result["grids"], result["patterns"]
    out: list[str] = []
    unc = truth["uncertainty_train"]
    out.append(
        f"The ReLU truth is itself uncertain by {_pct(unc)} (train; "
        f"{_pct(truth['uncertainty_test'])} test): the true flow at rtol {s['rtol']:g} "
        f"({truth['reference']['steps']} steps) and "
        f"at {s['loose_rtol']:g} ({truth['loose']['steps']} steps) differ by that much."
    )
    point = grids["point"]
    sizes = sorted(point, key=int)
    g_hi = sizes[-1]
    out.append(
        "Point-sampled, time-scheduled grids with linear weights reach "
        + ", ".join(f"{_pct(point[g]['train_error'])} (G = {g})" for g in sizes)
        + " train error against it."
    )
    floor = point[g_hi]["train_error"] > 0.5 * point["8"]["train_error"]
    if int(g_hi) > 8:
        out.append(
            f"From G = 8 to G = {g_hi} the error falls by a factor of "
            f"{point['8']['train_error'] / point[g_hi]['train_error']:.2f} only: "
            + ("a floor." if floor else "no floor at these sizes.")
        )
    base_rate = pats["mean_flip_rate"][f"{s['sample_dt']:g}"]
    fine = pats["fine_window_flip_rate"]
    lags = sorted(fine, key=float)
    lo, hi = lags[0], lags[-1]
    out.append(
        f"Along the ReLU truth, the fraction of (input, unit) pairs that flip sign per unit time "
        f"is {_layers(base_rate)} (layer 1 / 2, sampled every "
        f"{s['sample_dt']:g}). In t ∈ [{pats['fine_window'][0]:g}, {pats['fine_window'][1]:g}] "
        f"the rate counted every {lo} is {_layers(fine[lo])}, against {_layers(fine[hi])} counted "
        f"every {hi}: "
        + (
            "flips multiply as the sampling refines, which crossings of a kink cannot do: the "
            "pairs chatter."
            if all(a > 1.2 * b for a, b in zip(fine[lo], fine[hi], strict=True))
            else "the count hardly depends on the sampling, as for crossings of a kink."
        )
    )
    # NaN (no chattering pair in a layer) reads back from `results.json` as `None`.
    pinned = [math.nan if p is None else p for p in pats["pinned_ratio"]]
    share = _percent_layers(pats["flips_by_chattering_pairs"])
    out.append(
        f"{_percent_layers(pats['pairs_chattering'])} of pairs (layer 1 / 2) flip at least "
        f"{s['chatter_flips']} times and make {share} "
        f"of all flips; their median |pre-activation| is {_layers(pinned)} times that of all pairs"
        + (": they sit on their kink." if all(p < 0.2 for p in pinned if math.isfinite(p)) else ".")
    )
    km, jl = result["kernel_motion"], result["jump_vs_lag"]
    jump, drift = float(np.median(km["jump"])), float(np.median(km["drift"]))
    out.append(
        f"The NTK changes by {_pct(jump)} (median) between samples {km['lag_delta']:g} apart, "
        f"while its drift over {km['lag_drift']:g} accounts for {_pct(drift)} per such interval "
        f"({jump / drift:.1f}×)"
        + (
            f"; between lags {jl['lag'][0]:g} and {jl['lag'][-1]:g} the change goes from "
            f"{_pct(jl['change'][0])} to {_pct(jl['change'][-1])}, where a differentiable kernel "
            f"path would scale with the lag ({jl['lag'][-1] / jl['lag'][0]:.0f}×)."
            if jl["lag"]
            else "."
        )
    )
    ve = result["velocity_excess"]["median"]
    out.append(
        "Integrated over windows of one time unit, the NTK velocity −ηΘ∇L at the sampled states "
        + ("overshoots" if ve > 0 else "undershoots")
        + f" the displacement the outputs actually made by {ve:+.1%} (median over the windows "
        f"from t = {s['t_end'] / 10:g} on where the outputs move more than the misfit)."
    )
    sweep = result.get("sweep", {})
    if sweep:
        fam = "softplus(βx)/β" + (" − log 2/β" if s["centred"] else "")
        sizes = sorted(next(iter(sweep.values()))["errors"], key=int)
        out.append(
            f"Sweep {fam} → ReLU, point-sampled train error at G = {' / '.join(sizes)} (truth's "
            "uncertainty; NTK velocity excess): "
            + "; ".join(
                f"β = {b}: "
                + " / ".join(_pct(r["errors"][g]["train_error"]) for g in sizes)
                + f" ({_pct(r['uncertainty_train'])}; {r['velocity_excess']:+.1%})"
                for b, r in sweep.items()
            )
            + "."
        )
        if len(sizes) > 1:
            lo, hi = sizes[0], sizes[-1]
            gain = {b: r["errors"][lo]["train_error"] / r["errors"][hi]["train_error"]
                    for b, r in sweep.items()}  # fmt: skip
            out.append(
                f"The G = {lo} error divided by the G = {hi} error: "
                + ", ".join(f"{v:.1f} (β = {b})" for b, v in gain.items())
                + "."
            )
            below = [b for b, r in sweep.items()
                     if r["errors"][hi]["train_error"] < r["uncertainty_train"]]  # fmt: skip
            if below:
                out.append(
                    f"At β = {', '.join(below)} the G = {hi} grid is closer to the reference "
                    "truth than the looser true flow is: the gap between the two tolerances "
                    "is not a lower limit on the errors this comparison resolves."
                )
    out += _remedy_sentences(result, ve, sweep, floor)
    return out


def _remedy_sentences(result, ve: float, sweep, floor: bool) -> list[str]:
    grids, unc = result["grids"], result["truth"]["uncertainty_train"]
    point = grids["point"]
    out = []
    w = result["settings"]["window"]
    if "mean_jacobian" in grids and "8" in grids["mean_jacobian"]:
        mj, mk = grids["mean_jacobian"], grids.get("mean_kernel", {})
        sizes = sorted(mj, key=int)
        out.append(
            f"Remedy at G = 8 on ReLU sine (point-sampled {_pct(point['8']['train_error'])}, "
            f"truth ±{_pct(unc)}): the kernel of the mean Jacobian over ±{w:g} around each node "
            f"gives {_pct(mj['8']['train_error'])}; the mean kernel over the same states "
            f"{_pct(mk.get('8', {}).get('train_error', math.nan))}; "
            + "; ".join(
                f"soft gates β = {k[5:]} {_pct(v['8']['train_error'])}"
                for k, v in grids.items()
                if k.startswith("soft_") and "8" in v
            )
            + "."
        )
        soft = {k: v for k, v in grids.items() if k.startswith("soft_")}
        big = sorted((g for g in point if int(g) > 8), key=int)
        if soft and big:
            out.append(
                "Soft gates stop improving too: "
                + "; ".join(
                    f"β = {k[5:]}: "
                    + ", ".join(
                        f"{_pct(v[g]['train_error'])} (G = {g})" for g in sorted(v, key=int)
                    )  # fmt: skip
                    for k, v in soft.items()
                )
                + "."
            )
        if len(sizes) > 1:
            out.append(
                "With the mean Jacobian the error keeps falling with G: "
                + ", ".join(f"{_pct(mj[g]['train_error'])} (G = {g})" for g in sizes)
                + "; point-sampled: "
                + ", ".join(
                    f"{_pct(point[g]['train_error'])} (G = {g})" for g in sizes if g in point
                )
                + "."
            )
        g_hi = sizes[-1]
        smooth = [r["velocity_excess"] for b, r in sweep.items() if b != "inf"]
        if int(g_hi) <= 8 or g_hi not in point:
            out.append(
                "No grid larger than G = 8 was run with both constructions, so whether the "
                "mean-Jacobian grids pass the floor is not tested here."
            )
            return out
        converges = mj[g_hi]["train_error"] < 0.5 * point[g_hi]["train_error"]
        velocity = ve > 0 and (not smooth or ve > 3 * max(abs(v) for v in smooth))
        if floor and converges and velocity:
            out.append(
                "What explains the floor: on a ReLU network many (input, unit) pairs slide "
                "along their kink (a Filippov sliding mode), and there the flow moves with "
                "the relaxed Jacobian J_λ = λJ₊ + (1−λ)J₋, so the outputs follow the kernel "
                "J_λJ_λᵀ. A kernel sampled at any state has the gates at 0 or 1, and on average "
                "exceeds J_λJ_λᵀ by λ(1−λ)(J₊−J₋)(J₊−J₋)ᵀ: a too-fast flow (the velocity excess "
                "above), which more nodes or averaged kernels cannot remove (window-mean "
                f"kernels: {_pct(mk.get(g_hi, {}).get('train_error', math.nan))} at G = {g_hi}) "
                "and averaged Jacobians can. What the remedy buys: at G = 8, "
                f"{_pct(mj['8']['train_error'])} instead of {_pct(point['8']['train_error'])} "
                f"({point['8']['train_error'] / mj['8']['train_error']:.1f}× closer); at "
                f"G = {g_hi} the mean-Jacobian grid is "
                f"{point[g_hi]['train_error'] / mj[g_hi]['train_error']:.1f}× closer to the "
                f"truth than the point-sampled one ({_pct(mj[g_hi]['train_error'])} vs "
                f"{_pct(point[g_hi]['train_error'])}), "
                + (
                    "below the truth's own uncertainty."
                    if mj[g_hi]["train_error"] < unc
                    else "though not below the truth's own uncertainty."
                )
            )
        else:
            missing = [
                name
                for name, ok in (
                    ("a floor of point-sampled grids", floor),
                    ("mean-Jacobian grids converging past it", converges),
                    ("an NTK velocity excess on ReLU well above the smooth networks'", velocity),
                )
                if not ok
            ]
            out.append(
                "This run does not support the sliding-mode explanation of the floor: it lacks "
                + "; ".join(missing)
                + "."
            )
    return out


__all__ = ["sentences"]
