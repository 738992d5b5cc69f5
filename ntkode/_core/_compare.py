"""Compare surrogate trajectories against the true flow: errors, costs, a table, a figure, JSON."""

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from ._records import write_json
from ._results import result_name
from ._solution import Solution

#: Keys every row of `results.json` carries (others may be added per method).
ROW_KEYS = ("max_rel_train_error", "final_train_loss", "final_test_loss", "seconds", "steps")


def _rel_error(u, u_ref, scale, mask) -> float:
    if u_ref.shape[-2] == 0 or scale == 0:
        return math.nan
    diff = jnp.sqrt(jnp.sum((u - u_ref) ** 2, axis=(-2, -1)))
    return float(jnp.max(jnp.where(mask, diff, 0.0)) / scale)


def check_comparable(sol: Solution, reference: Solution) -> None:
    """Raise a sentence unless `sol` and `reference` are solutions on the same data."""
    for name in ("y_train", "y_test"):
        a, b = getattr(sol, name), getattr(reference, name)
        if a.shape != b.shape or not bool(jnp.allclose(a, b, rtol=1e-6, atol=1e-12)):
            what = f"shapes {a.shape} and {b.shape}" if a.shape != b.shape else "values"
            raise ValueError(
                f"compare: the solutions were solved on different data (their `{name}` "
                f"differ in {what}); trajectory errors only mean something on the same "
                "training and test sets."
            )
    lo, hi = float(reference.t[0]), float(reference.t[-1])
    if float(sol.t[0]) > lo or float(sol.t[-1]) < hi:
        raise ValueError(
            f"compare: a solution saved times [{float(sol.t[0])}, {float(sol.t[-1])}] but the "
            f"reference needs [{lo}, {hi}]; solve both over the same `tspan` and `saveat`."
        )


def trajectory_errors(sol: Solution, reference: Solution) -> dict[str, float]:
    r"""Max relative trajectory errors of `sol` against `reference` on the reference's times.

    $\max_t \|u(t) - u_{ref}(t)\| / \|u_{ref}(0) - Y\|$ on train outputs, and the same on
    test outputs (with test targets). `sol` is interpolated (`sol(t)`) where its times
    differ. If an event stopped either solve, the maximum runs up to the earlier stop only
    (past it one of them no longer trains). Solutions on different data are refused.
    """
    sol._single("trajectory_errors")
    reference._single("trajectory_errors")
    check_comparable(sol, reference)
    ts = reference.t
    if sol.t.shape == ts.shape and bool(jnp.allclose(sol.t, ts)):
        u, us = sol.train, sol.test
    else:
        u, us = sol(ts)
    mask = ts <= jnp.minimum(sol.t_stop, reference.t_stop)
    scale = float(jnp.linalg.norm(reference.train[0] - reference.y_train))
    scale_test = float(jnp.linalg.norm(reference.test[0] - reference.y_test))
    return {
        "max_rel_train_error": _rel_error(u, reference.train, scale, mask),
        "max_rel_test_error": _rel_error(us, reference.test, scale_test, mask),
    }


class Comparison:
    """Rows of metrics per method (reference first), with the solutions for plotting."""

    def __init__(self, reference_name: str = "true"):
        self.reference_name = reference_name
        self.rows: dict[str, dict[str, Any]] = {}
        self.solutions: dict[str, Solution] = {}

    def add(
        self, name: str, sol: Solution, reference: Solution | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Add method `name` (errors measured against `reference`, default: itself)."""
        errs = trajectory_errors(sol, reference if reference is not None else sol)
        end = sol.summary()
        row = {
            **errs,
            "final_train_loss": end["final_train_loss"],
            "final_test_loss": end["final_test_loss"],
            "t_end": end["t_end"],
            "steps": int(sol.num_steps),
            "result": result_name(sol.result),
            "retcode": sol.message,
        }
        row.update(extra)
        self.rows[name] = row
        self.solutions[name] = sol
        return row

    def table(self) -> str:
        """A plain-text table, one line per method."""
        cols = [
            ("method", "{:<22s}"),
            ("max_rel_train_error", "{:>10.2%}"),
            ("max_rel_test_error", "{:>10.2%}"),
            ("final_train_loss", "{:>11.3e}"),
            ("final_test_loss", "{:>11.3e}"),
            ("seconds", "{:>9.3f}"),
            ("steps", "{:>7d}"),
        ]
        optional = [("grid_seconds", "{:>9.3f}"), ("speedup", "{:>9.1f}")]
        cols += [c for c in optional if any(c[0] in r for r in self.rows.values())]
        heads = {
            "method": "method",
            "max_rel_train_error": "train err",
            "max_rel_test_error": "test err",
            "final_train_loss": "train loss",
            "final_test_loss": "test loss",
            "seconds": "seconds",
            "steps": "steps",
            "grid_seconds": "build s",
            "speedup": "speedup",
        }
        widths = [
            len(fmt.format(0 if "d" in fmt else 0.0) if k != "method" else "x" * 22)
            for k, fmt in cols
        ]
        lines = [
            "  ".join(
                heads[k].rjust(w) if k != "method" else heads[k].ljust(w)
                for (k, _), w in zip(cols, widths, strict=True)
            )
        ]
        for name, row in self.rows.items():
            cells = []
            for (k, fmt), w in zip(cols, widths, strict=True):
                v = name if k == "method" else row.get(k)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    cells.append("-".rjust(w))
                else:
                    cells.append(fmt.format(v))
            lines.append("  ".join(cells))
        return "\n".join(lines)

    def save_json(self, path: str) -> None:
        """Write `results.json` (atomically: a crash leaves the previous file intact)."""
        write_json(path, self.rows)

    def plot(
        self,
        kinds: Sequence[str] = ("loss", "outputs"),
        *,
        axes: Sequence[Any] | None = None,
        split: str = "train",
        examples: int | Sequence[int] = 3,
        output: int = 0,
    ) -> tuple[Any, list[Any]]:
        """Every method side by side, one panel per kind; returns `(figure, axes)`.

        `kinds` are those of [`ntkode.plot`][] (`"loss"`, `"outputs"`, `"residual"`,
        `"error"` against the reference); the reference is drawn thick and solid. Pass
        `axes` (one per kind) to draw into a figure of your own. Needs matplotlib.
        """
        from .._plot import plot_comparison

        return plot_comparison(
            self, kinds, axes=axes, split=split, examples=examples, output=output
        )


def compare(
    reference: Solution, *surrogates: Solution, names: list[str] | None = None, **named: Solution
) -> Comparison:
    """Errors of surrogate solutions against a reference (true-flow) solution.

    `compare(sol_true, sol_a, sol_b)` or `compare(sol_true, frozen=sol_a, scheduled=sol_b)`.
    Returns a [`ntkode.Comparison`][] with `.rows`, `.table()`, `.plot()` (matplotlib
    figure and axes), `.save_json(path)`.
    """
    if names is not None and len(names) != len(surrogates):
        raise ValueError("`names` must name each positional surrogate solution.")
    names = names or [s.kind or f"surrogate{i}" for i, s in enumerate(surrogates)]
    cmp = Comparison("true")
    cmp.add("true", reference)
    for name, sol in [*zip(names, surrogates, strict=True), *named.items()]:
        if name in cmp.rows:
            name = f"{name}_{len(cmp.rows)}"
        cmp.add(name, sol, reference)
    return cmp
