"""Plot recipes for solutions and comparisons, and the one place that sets up matplotlib.

In the spirit of Julia's plot recipes (`plot(sol)` in DifferentialEquations.jl): a recipe
knows what a [`ntkode.Solution`][] or a [`ntkode.Comparison`][] means (losses over training
time, output trajectories, errors against a reference) and draws it on matplotlib axes that
it returns, for the user to restyle, annotate or save. matplotlib is imported on the first
call only, never by `import ntkode`.

matplotlib picks a non-interactive backend by itself where there is no display, so nothing
here forces one: figures show in notebooks and are written to files on servers alike.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._core._compare import Comparison
from ._core._solution import Solution

#: Figure style shared by every ntkode figure: readable ticks and labels at print size.
STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "legend.framealpha": 0.85,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
}

#: What each recipe draws, by name.
KINDS = ("loss", "outputs", "residual", "error")


# With dθ/dt = −η∇L, one unit of flow time is one full-batch gradient step of size η.
_T_LABEL = "training time t (≈ t gradient steps of size η)"


def pyplot() -> Any:
    """`matplotlib.pyplot`, with ntkode's figure style applied (a clear error if missing)."""
    try:
        import matplotlib as mpl
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            'Figures need matplotlib: install it with `pip install "ntkode[studies]"` '
            "(or `pip install matplotlib`)."
        ) from err
    mpl.rcParams.update(STYLE)
    return plt


def save(fig: Any, path: Any) -> None:
    """Write `fig` to `path` and release it."""
    fig.savefig(path)
    pyplot().close(fig)


# ---------------------------------------------------------------- one solution, one panel


def _trajectories(sol: Solution) -> list[Solution]:
    """The single trajectories of a solution (an ensemble solution has several)."""
    return [sol] if sol.t.ndim == 1 else [sol[i] for i in range(sol.t.shape[0])]


def _examples(examples: int | Sequence[int], n: int) -> list[int]:
    if isinstance(examples, int | np.integer):
        return list(range(min(int(examples), n)))
    picked = [int(j) for j in examples]
    bad = [j for j in picked if not 0 <= j < n]
    if bad:
        raise ValueError(f"`examples` {bad} are out of range: the split has {n} examples.")
    return picked


def _error_curve(sol: Solution, ref: Solution, split: str) -> tuple[np.ndarray, np.ndarray]:
    r"""$\|u(t) - u_{ref}(t)\| / \|u_{ref}(0) - Y\|$ on the reference's times."""
    ts = ref.t
    if sol.t.shape == ts.shape and bool(jnp.allclose(sol.t, ts)):
        u = sol.train if split == "train" else sol.test
    else:
        u = getattr(sol(ts), split)
    u_ref = ref.train if split == "train" else ref.test
    y = ref.y_train if split == "train" else ref.y_test
    scale = float(jnp.linalg.norm(u_ref[0] - y))
    diff = np.asarray(jnp.sqrt(jnp.sum((u - u_ref) ** 2, axis=(-2, -1))))
    return np.asarray(ts), diff / (scale if scale > 0 else 1.0)


def _draw(ax, kind, sol, *, label, split, examples, output, reference, **style) -> None:
    """Draw one single-trajectory solution on `ax` with matplotlib keyword `style`."""
    t = np.asarray(sol.t)
    u = sol.train if split == "train" else sol.test
    y = sol.y_train if split == "train" else sol.y_test
    if kind == "loss":
        (line,) = ax.semilogy(t, np.asarray(sol.train_loss), label=label, **style)
        if sol.y_test.shape[0]:
            test_style = {**style, "color": line.get_color(), "ls": "--", "lw": 1}
            ax.semilogy(t, np.asarray(sol.test_loss), **test_style)
        ax.set(xlabel=_T_LABEL, ylabel="loss (solid train, dashed test)")
    elif kind == "outputs":
        if not 0 <= output < u.shape[-1]:
            raise ValueError(f"`output` {output} is out of range: the model has {u.shape[-1]}.")
        color = style.pop("color", None)
        for i, j in enumerate(_examples(examples, u.shape[1])):
            first = label if i == 0 else None
            (line,) = ax.plot(t, np.asarray(u[:, j, output]), color=color, label=first, **style)
            color = line.get_color()  # one colour per solution, one line per example
        ax.set(xlabel=_T_LABEL, ylabel=f"{split} output {output}")
    elif kind == "residual":
        r = np.asarray(jnp.sqrt(jnp.sum((u - y) ** 2, axis=(-2, -1))))
        ax.semilogy(t, r / (r[0] if r[0] > 0 else 1.0), label=label, **style)
        ax.set(xlabel=_T_LABEL, ylabel=f"‖u(t) − Y‖ / ‖u(0) − Y‖ ({split})")
    else:  # "error"
        if reference is None:
            raise ValueError("kind='error' measures against a reference: pass `reference=`.")
        if u.shape[1:] != (reference.train if split == "train" else reference.test).shape[1:]:
            raise ValueError("`reference` is a solution of other data; compare like with like.")
        ts, err = _error_curve(sol, reference, split)
        ax.plot(ts, err, label=label, **style)
        ax.set(xlabel=_T_LABEL, ylabel=f"‖u(t) − u_ref(t)‖ / ‖u_ref(0) − Y‖ ({split})")


def _as_named(obj: Any) -> dict[str, Solution]:
    if isinstance(obj, Solution):
        return {obj.kind or "solution": obj}
    if isinstance(obj, Mapping):
        named = dict(obj)
    elif isinstance(obj, Sequence) and not isinstance(obj, str):
        named = {f"{getattr(s, 'kind', '') or 'solution'} {i}": s for i, s in enumerate(obj)}
    else:
        named = {}
    if not named or not all(isinstance(s, Solution) for s in named.values()):
        raise TypeError(
            "nk.plot draws an ntkode.Solution, a list or dict of them, or an ntkode.Comparison; "
            f"got {type(obj).__name__}."
        )
    return named


def plot(
    obj: Any,
    kind: str = "loss",
    *,
    ax: Any = None,
    split: str = "train",
    examples: int | Sequence[int] = 3,
    output: int = 0,
    reference: Solution | None = None,
    **style: Any,
) -> tuple[Any, Any]:
    """Plot a solution (or several) over training time; returns `(figure, axes)`.

    **Arguments:**

    - `obj`: a [`ntkode.Solution`][] (an ensemble solution draws every trajectory), a list
      or a `{name: solution}` dict of them (overlaid, with a legend), or a
      [`ntkode.Comparison`][] (then this is `obj.plot(...)`, several panels).
    - `kind`: what to draw:
        - `"loss"` (default): train loss (solid) and test loss (dashed), log scale;
        - `"outputs"`: output `output` of a few examples (`examples`: a count or indices);
        - `"residual"`: $\\|u(t) - Y\\| / \\|u(0) - Y\\|$, log scale;
        - `"error"`: $\\|u(t) - u_{ref}(t)\\| / \\|u_{ref}(0) - Y\\|$ against `reference`
          (the measure of [`ntkode.trajectory_errors`][], over time).
    - `ax`: matplotlib axes to draw on (default: a new figure).
    - `split`: `"train"` or `"test"` outputs (for `"outputs"`, `"residual"`, `"error"`).
    - `**style`: matplotlib line properties (`color`, `ls`, `lw`, `alpha`, ...).

    **Returns:** `(figure, axes)`, like `plt.subplots()`: restyle, annotate or save them.
    """
    if isinstance(obj, Comparison):
        return obj.plot(**({} if ax is None else {"axes": [ax]}), kinds=(kind,), split=split)
    if kind not in KINDS:
        raise ValueError(f"Unknown `kind` {kind!r}; choose one of {list(KINDS)}.")
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    named = _as_named(obj)
    if ax is None:
        fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    else:
        fig = ax.figure
    for name, sol in named.items():
        for i, single in enumerate(_trajectories(sol)):
            _draw(
                ax,
                kind,
                single,
                label=name if i == 0 and len(named) > 1 else None,
                split=split,
                examples=examples,
                output=output,
                reference=reference,
                **style,
            )
    if len(named) > 1:
        ax.legend()
    return fig, ax


# ---------------------------------------------------------------- comparisons


def plot_comparison(
    cmp: Comparison,
    kinds: Sequence[str] = ("loss", "outputs"),
    *,
    axes: Sequence[Any] | None = None,
    split: str = "train",
    examples: int | Sequence[int] = 3,
    output: int = 0,
) -> tuple[Any, list[Any]]:
    """Every method of a comparison, one panel per kind; the reference drawn thick and solid."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"`kinds` must be a non-empty choice of {list(KINDS)}, got {kinds!r}.")
    if not cmp.solutions:
        raise ValueError("The comparison holds no solutions to plot; add some with cmp.add(...).")
    if axes is None:
        fig, made = pyplot().subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.8), squeeze=False)
        axes = list(made[0])
    else:
        axes = list(axes)
        if len(axes) != len(kinds):
            raise ValueError(f"{len(axes)} axes for {len(kinds)} kinds; pass one per kind.")
        fig = axes[0].figure
    ref = cmp.solutions.get(cmp.reference_name)
    for ax, kind in zip(axes, kinds, strict=True):
        for i, (name, sol) in enumerate(cmp.solutions.items()):
            is_ref = sol is ref
            if kind == "error" and is_ref:
                continue  # zero by definition
            style = dict(color=f"C{i % 10}", lw=2 if is_ref else 1.2)
            if kind == "outputs" and not is_ref:
                style["ls"] = ":"
            _draw(
                ax,
                kind,
                sol,
                label=name,
                split=split,
                examples=examples,
                output=output,
                reference=ref,
                **style,
            )
        ax.set_title(
            {
                "loss": "Train and test loss of every method",
                "outputs": f"{split.capitalize()} outputs against {cmp.reference_name}",
                "residual": f"{split.capitalize()} residual of every method",
            }.get(kind, kind)
        )
        if kind == "error":
            ax.set_title(f"Error against {cmp.reference_name}")
        ax.legend()
    fig.tight_layout()
    return fig, axes
