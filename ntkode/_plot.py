"""The one place that sets up matplotlib (imported on first use, never by `import ntkode`).

matplotlib picks a non-interactive backend by itself where there is no display, so nothing
here forces one: figures show in notebooks and are written to files on servers alike.
"""

from typing import Any

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
