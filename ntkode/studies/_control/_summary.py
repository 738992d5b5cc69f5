"""The control study's summary: medians over seeds per policy, and the target figures."""

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._run import StudyRecord

#: Policies designed on the surrogate, then the baselines found on the network.
DESIGNED = ("inverse_sharpness", "designed", "designed_uncertified", "warmup_inverse_sharpness")
BASELINES = ("best_constant", "best_certified_constant", "cosine")
CERTIFIED = {
    "inverse_sharpness": True,
    "designed": True,
    "designed_uncertified": False,
    "warmup_inverse_sharpness": False,
    "best_constant": False,
    "best_certified_constant": True,
    "cosine": False,
}


def _number(v: float | None) -> float:
    """A loss or error as read back from `results.json`, where non-finite values are
    `null`: infinite (a diverged run's loss, a blown-up surrogate's error)."""
    return float("inf") if v is None or not np.isfinite(v) else float(v)


def _median(values: Sequence[float | None]) -> float | None:
    """The median, `None` (never reached) counting as larger than every number."""
    keyed = sorted(values, key=lambda v: (v is None, 0.0 if v is None else v))
    if not keyed:
        return None
    mid = keyed[(len(keyed) - 1) // 2 : len(keyed) // 2 + 1]
    if any(v is None for v in mid):
        return None
    return float(statistics.mean(mid))


def best_rate(
    candidates: dict[float, list[dict[str, Any]]], key: str = "steps_to_target_network"
) -> float:
    """The rate with the fewest median steps to target (then the lowest median final loss)."""

    def score(rows):
        med = _median([r[key] for r in rows])
        final = statistics.median(_number(r["final_train_loss_network"]) for r in rows)
        return (med is None, med or 0.0, final)

    return min(candidates, key=lambda eta: score(candidates[eta]))


def summarise(
    record: StudyRecord,
    seeds: list[int],
    rates: list[float],
    best: float,
    best_certified: float | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Medians over seeds per policy, the constant-rate map, and the issue's target figures."""
    first = [record.get(f"seed{s}") for s in seeds]
    second = [record.get(f"seed{s}-baselines") for s in seeds]
    rows_of = {name: [p["policies"][name] for p in first] for name in DESIGNED[:3]}
    rows_of.update({name: [p["policies"][name] for p in second] for name in second[0]["policies"]})
    policies = {}
    for name in (*DESIGNED, *BASELINES):
        rows = rows_of[name]
        policies[name] = {
            "certified": CERTIFIED[name],
            "steps_to_target_network": _median([r["steps_to_target_network"] for r in rows]),
            "steps_to_target_surrogate": _median([r["steps_to_target_surrogate"] for r in rows]),
            "final_train_loss_network": statistics.median(
                _number(r["final_train_loss_network"]) for r in rows
            ),
            "final_test_loss_network": statistics.median(
                _number(r["final_test_loss_network"]) for r in rows
            ),
            "final_train_loss_surrogate": statistics.median(
                _number(r["final_train_loss_surrogate"]) for r in rows
            ),
            "diverged": any(r["diverged"] for r in rows),
            "prediction_error": max(_number(r["prediction_error"]) for r in rows),
            "prediction_error_above_target": max(
                _number(r["prediction_error_above_target"]) for r in rows
            ),
            # The surrogate scheduled on the effective time τ = Σ η (same reference kernels).
            "steps_to_target_surrogate_time": _median(
                [r["steps_to_target_surrogate_time"] for r in rows]
            ),
            "prediction_error_time": max(_number(r["prediction_error_time"]) for r in rows),
            "prediction_error_time_above_target": max(
                _number(r["prediction_error_time_above_target"]) for r in rows
            ),
            "one_step_residual_ratio": [
                statistics.median(v) for v in zip(*(r["one_step_residual_ratio"] for r in rows))
            ],
            "one_step_error": [
                statistics.median(v) for v in zip(*(r["one_step_error"] for r in rows))
            ],
            "certificate_fraction_held_network": min(
                r["certificate_network"]["fraction_held"] for r in rows
            ),
            "certificate_fraction_held_surrogate": min(
                r["certificate_surrogate"]["fraction_held"] for r in rows
            ),
            "lambda_max_over_n_network": [
                statistics.median(v) for v in zip(*(r["lambda_max_over_n_network"] for r in rows))
            ],
            "sharpness_steps": rows[0]["sharpness_steps"],
            "steps_to_target_by_seed": [r["steps_to_target_network"] for r in rows],
            "eta": {str(s): r["eta"] for s, r in zip(seeds, rows, strict=True)},
        }
    cmap = [
        {
            "eta": eta,
            "certified_on_every_seed": all(p["constant_map"][i]["certified"] for p in first),
            "steps_to_target_network": _median(
                [p["constant_map"][i]["steps_to_target_network"] for p in first]
            ),
            "steps_to_target_surrogate": _median(
                [p["constant_map"][i]["steps_to_target_surrogate"] for p in first]
            ),
            "diverged": any(p["constant_map"][i]["diverged"] for p in first),
            "diverged_surrogate": any(p["constant_map"][i]["diverged_surrogate"] for p in first),
        }
        for i, eta in enumerate(rates)
    ]

    def steps(name):
        v = policies[name]["steps_to_target_network"]
        return float("inf") if v is None else v

    def ratio(a, b):
        """`steps(a) / steps(b)`, or `None` where either never reached the target."""
        return steps(a) / steps(b) if np.isfinite(steps(a)) and np.isfinite(steps(b)) else None

    certified_designed = [n for n in DESIGNED if CERTIFIED[n]]
    certified = (*certified_designed, "best_certified_constant")

    def worst(key):
        """The largest `key` over the certified policies."""
        return max(policies[n][key] for n in certified)

    best_designed = min(certified_designed, key=steps)
    overall = min(DESIGNED, key=steps)
    bc = policies["best_constant"]
    return {
        "policies": policies,
        "constant_map": cmap,
        "grid_search": {
            "rates": rates,
            "network_runs": len(rates) * len(seeds),
            "best_constant_eta": best,
            "best_certified_constant_eta": [record.get(f"seed{s}")["certified_cap"] for s in seeds],
            "best_certified_grid_eta": best_certified,
        },
        "targets": {
            "certified_ratio": ratio(best_designed, "best_certified_constant"),
            "certified_policy": best_designed,
            "prediction_error_certified": worst("prediction_error"),
            "prediction_error_certified_above_target": worst("prediction_error_above_target"),
            # The same two on the effective-time surrogate, and per certified policy.
            "prediction_error_certified_time": worst("prediction_error_time"),
            "prediction_error_certified_time_above_target": worst(
                "prediction_error_time_above_target"
            ),
            "prediction_error_by_certified_policy": {
                n: {
                    "loss_level": policies[n]["prediction_error"],
                    "loss_level_above_target": policies[n]["prediction_error_above_target"],
                    "time": policies[n]["prediction_error_time"],
                    "time_above_target": policies[n]["prediction_error_time_above_target"],
                }
                for n in certified
            },
            # inverse_sharpness on grids identified on its own network run: worst seed.
            "prediction_error_identified": {
                axis: {
                    m: max(_number(p["identified"][axis][m]) for p in first)
                    for m in ("prediction_error", "prediction_error_above_target")
                }
                for axis in ("loss_level", "time")
            },
            "overall_ratio": ratio(overall, "best_constant"),
            "overall_policy": overall,
            "catapult_lambda_max_over_n": dict(
                zip(map(str, bc["sharpness_steps"]), bc["lambda_max_over_n_network"], strict=True)
            ),
        },
        "seeds": seeds,
        "problem": settings["problem"],
        "loss": settings["loss"],
        f"{settings['problem']}_problem": settings[f"{settings['problem']}_problem"],
        "targets_by_seed": [p["target"] for p in first],
    }


__all__ = ["BASELINES", "CERTIFIED", "DESIGNED", "best_rate", "summarise"]
