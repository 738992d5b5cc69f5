r"""Classification metrics along a trajectory: accuracy, predicted-class agreement, their gaps.

A trajectory of outputs `u` has shape `(T, n, k)` (or `(n, k)` at one time); the predicted
class of an example is $\arg\max_a u_a$. Targets are one-hot (or probability) rows `(n, k)`,
whose arg-max is the true class, or integer labels `(n,)`. With `k = 1` the sign of the
output is the class (targets ±1 or 0/1), as for the one-vs-rest data of
`ntkode.datasets.uci`.
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ._solution import Solution


def _classes_of_outputs(u: Array) -> Array:
    if u.ndim < 2:
        raise ValueError(
            f"Outputs must have shape (n, k) or (T, n, k) (k class scores per example), got "
            f"shape {u.shape}."
        )
    if u.shape[-1] == 1:
        return (u[..., 0] > 0).astype(jnp.int32)
    return jnp.argmax(u, axis=-1)


def _classes_of_targets(y, k: int) -> Array:
    y = jnp.asarray(y)
    if y.ndim == 1:
        if jnp.issubdtype(y.dtype, jnp.inexact):
            if not bool(jnp.all(y == jnp.round(y))):
                raise ValueError(
                    "Integer class labels were expected in `y` of shape (n,), but it holds "
                    "non-integer values; pass labels 0..k-1 or one-hot rows (n, k)."
                )
            y = y.astype(jnp.int32)
        lo, hi = int(jnp.min(y)), int(jnp.max(y))
        if k > 1 and (lo < 0 or hi >= k):
            raise ValueError(
                f"Class labels in `y` must lie in 0..{k - 1} (the outputs have k = {k} "
                f"columns), found labels from {lo} to {hi}."
            )
        return y
    if y.ndim != 2 or y.shape[-1] != k:
        raise ValueError(
            f"Targets `y` of shape {y.shape} do not match outputs with k = {k} columns: pass "
            f"one-hot rows of shape (n, {k}) or integer labels of shape (n,)."
        )
    if k == 1:
        return (y[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(y, axis=-1)


def accuracy(u: Float[ArrayLike, "*time n k"], y: Float[ArrayLike, "n k"] | Int[ArrayLike, " n"]):
    """The share of examples whose predicted class is the target's, at each time: `(*time,)`."""
    u = jnp.asarray(u)
    pred = _classes_of_outputs(u)
    truth = _classes_of_targets(y, u.shape[-1])
    if truth.shape[0] != u.shape[-2]:
        raise ValueError(
            f"`y` has {truth.shape[0]} examples but the outputs have {u.shape[-2]}; they must "
            "match."
        )
    return jnp.mean(pred == truth, axis=-1)


def class_agreement(u: Float[ArrayLike, "*time n k"], v: Float[ArrayLike, "*time n k"]):
    """The share of examples on which two sets of outputs predict the same class: `(*time,)`."""
    u, v = jnp.asarray(u), jnp.asarray(v)
    if u.shape[-2:] != v.shape[-2:]:
        raise ValueError(
            f"Outputs of shapes {u.shape} and {v.shape} cannot be compared: they need the same "
            "examples and classes (last two axes)."
        )
    return jnp.mean(_classes_of_outputs(u) == _classes_of_outputs(v), axis=-1)


def classification_metrics(sol: Solution, reference: Solution) -> dict[str, float]:
    """Accuracy metrics of `sol` against `reference` (e.g. a surrogate against the true flow).

    - `final_test_accuracy`, `final_train_accuracy`: accuracies of `sol` at its last time;
    - `max_accuracy_gap`: $\\max_t |\\mathrm{acc}_{sol}(t) - \\mathrm{acc}_{ref}(t)|$ on the
      test set (train set if there is no test set), on the reference's times;
    - `final_class_agreement`: the share of test examples (train if none) on which `sol` and
      `reference` predict the same class at the end.

    Times are matched as in `ntkode.trajectory_errors` (`sol(t)` where they differ).
    """
    ts = reference.t
    if sol.t.shape == ts.shape and bool(jnp.allclose(sol.t, ts)):
        u, us = sol.train, sol.test
    else:
        u, us = sol(ts)
    on_test = reference.y_test.shape[0] > 0
    a, a_ref = (us, reference.test) if on_test else (u, reference.train)
    y = reference.y_test if on_test else reference.y_train
    gap = jnp.max(jnp.abs(accuracy(a, y) - accuracy(a_ref, y)))
    out = {
        "final_train_accuracy": float(accuracy(sol.train[-1], sol.y_train)),
        "final_test_accuracy": (
            float(accuracy(sol.test[-1], sol.y_test)) if sol.y_test.shape[0] else float("nan")
        ),
        "max_accuracy_gap": float(gap),
        "final_class_agreement": float(class_agreement(a[-1], a_ref[-1])),
    }
    return {k: float(np.asarray(v)) for k, v in out.items()}


__all__ = ["accuracy", "class_agreement", "classification_metrics"]
