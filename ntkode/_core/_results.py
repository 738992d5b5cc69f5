"""Result codes: diffrax's (which extend optimistix's and lineax's), with ntkode's own items.

Every ntkode result object (solutions, path kernels, tuning runs, MKL solves, studies) carries
one of these codes; `RESULTS[code]` is its sentence. diffrax's codes pass through unchanged
(`RESULTS.promote(diffrax_result)`), so a solve's status is never re-mapped by hand. Where
ntkode can say more about a diffrax item in its setting (training dynamics stiffen as the loss
falls), the item's sentence is replaced by ntkode's.
"""

import warnings
from typing import Any

import diffrax
import numpy as np

with warnings.catch_warnings():
    # Redefining an inherited item's sentence is what we mean to do; equinox warns about it.
    warnings.filterwarnings("ignore", "Enumeration has duplicate", UserWarning)

    class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
        """Why a computation ended. Each item carries the sentence shown to the user."""

        successful = "The computation finished successfully."
        max_steps_reached = (
            "The solver took `max_steps` steps before reaching the end of `tspan`. Training "
            "dynamics stiffen as the loss falls: increase `max_steps`, loosen `rtol`/`atol`, "
            "shorten `tspan`, or pass a stiff solver (e.g. diffrax.Kvaerno5())."
        )
        event_occurred = (
            "An event stopped the solve before the end of `tspan`; `sol.event_time` and "
            "`sol.final` say when and where."
        )
        dt_min_reached = (
            "The step size fell below the controller's minimum: the dynamics are too stiff "
            "for this solver. Try a smaller learning rate, or a stiff solver such as "
            "diffrax.Kvaerno5()."
        )
        nonfinite = (
            "A non-finite value (NaN or infinity) appeared. Try a smaller learning rate, "
            "tighter tolerances, or a stiff solver."
        )
        diverged = (
            "The run diverged: the outputs became non-finite. For gradient descent, lower "
            "the learning rate (below 2n/λ_max of the NTK)."
        )
        nonfinite_objective = (
            "The objective became non-finite (NaN or infinity); the best iterate so far was "
            "kept. Try a smaller optimiser step, tighter surrogate tolerances, or fewer steps."
        )
        nonfinite_gradient = (
            "The gradient became non-finite (NaN or infinity); the best iterate so far was "
            "kept. Try a smaller optimiser step, tighter surrogate tolerances, or fewer steps."
        )
        not_converged = (
            "The iteration stopped at its step budget before reaching its tolerance; raise "
            "the budget or loosen the tolerance."
        )


# Item names, for machine-readable records (lineax's, optimistix's, diffrax's, then ntkode's).
_NAMES = (
    "successful", "max_steps_reached", "singular", "breakdown", "stagnation", "conlim",
    "nonfinite_input", "nonlinear_max_steps_reached", "nonlinear_divergence", "nonfinite",
    "dt_min_reached", "event_occurred", "max_steps_rejected", "internal_error", "diverged",
    "nonfinite_objective", "nonfinite_gradient", "not_converged",
)  # fmt: skip


def promote(result: Any) -> Any:
    """An ntkode `RESULTS` item from a diffrax/optimistix/lineax one (or an ntkode one)."""
    return result if isinstance(result, RESULTS) else RESULTS.promote(result)


def result_name(result: Any) -> str:
    """The item name of a (scalar) result code, e.g. `"max_steps_reached"`."""
    result = promote(result)
    for name in _NAMES:
        item = getattr(RESULTS, name, None)
        if item is not None and bool(np.asarray(item == result)):
            return name
    return "unknown"


def success_mask(result: Any) -> Any:
    """`result` is successful, or an event stopped the solve on purpose (as in diffrax's
    `is_successful`); a jax boolean array, usable under `jit`."""
    result = promote(result)
    return (result == RESULTS.successful) | (result == RESULTS.event_occurred)


def is_successful(result: Any) -> bool | np.ndarray:
    """`True` where `result` is `RESULTS.successful` or `RESULTS.event_occurred` (an array for
    batched results)."""
    ok = np.asarray(success_mask(result))
    return bool(ok) if ok.ndim == 0 else ok


def result_index(result: Any) -> tuple[Any, tuple[str, ...]]:
    """`(index, messages)` with `messages[index]` the sentence of `result`, for
    `eqx.branched_error_if` (raising a result's own sentence at run time under `jit`)."""
    result = promote(result)
    items = [getattr(RESULTS, name) for name in _NAMES]
    index = sum(i * (result == item).astype(int) for i, item in enumerate(items))
    return index, tuple(RESULTS[item] for item in items)


def message(result: Any) -> str:
    """The sentence of a result code (one line per entry, numbered, for batched results)."""
    result = promote(result)
    ok = np.asarray(result == RESULTS.successful)
    if ok.ndim == 0:
        return RESULTS[result]
    lines = [RESULTS[_index(result, i)] for i in range(ok.shape[0])]
    return "\n".join(f"trajectory {i}: {m}" for i, m in enumerate(lines))


def _index(result: Any, i: int) -> Any:
    import jax

    return jax.tree.map(lambda a: a[i], result)


def as_record(result: Any) -> dict[str, str]:
    """`{"result": name, "message": sentence}` for JSON files."""
    return {"result": result_name(result), "message": message(result)}
