"""The LPV certificate on sine: the solved residual of scheduled surrogates against the
schedule-blind bound of `ntkode.certify` and the envelopes of `ntkode.certify_residual`.

    ntkode certify --out DIR [--quick]    (or python -m ntkode.studies._certificate)

For ReLU and softplus networks (`ntkode.sine_problem`), a true flow gives a grid of `G`
kernels (`ntkode.KernelGrid.from_solution`, time nodes and loss-level nodes); each grid's
surrogate (linear interpolation) is solved and its train residual $\\|u(t) - Y\\|$ compared
with both bounds. Writes `results.json` (settings, per activation and schedule the three
curves and their values at the end) and `certificate.png`.
"""

import argparse
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._core._records import write_json
from .._core._solve import solve
from .._plot import pyplot
from .._scheduled import _schedule as S
from .._scheduled._certify import certify_residual
from .._scheduled._dense import KernelGrid
from .._scheduled._interp import Linear
from .._scheduled._problem import ScheduledKernelProblem, ScheduleRangeWarning
from ._problems import sine_problem

FULL = dict(width=128, n_train=64, n_test=32, dim=8, t_end=50.0, grid_size=8, substeps=16)
QUICK = dict(width=32, n_train=32, n_test=16, dim=8, t_end=20.0, grid_size=4, substeps=8)
SCHEDULES = {"time": S.Time(), "loss": S.LossLevel()}


def certificate_study(out: str | None = None, quick: bool = False, log=print) -> dict:
    """Run the comparison and return (and, with `out`, write) its record."""
    settings = dict(QUICK if quick else FULL, quick=quick, interpolation="Linear")
    start = time.perf_counter()
    G, T = settings["grid_size"], settings["t_end"]
    ts = np.linspace(0.0, T, 101)
    times = np.linspace(0.0, T, G)
    runs: dict = {}
    for act in ("relu", "softplus"):
        prob = sine_problem(
            width=settings["width"],
            n_train=settings["n_train"],
            n_test=settings["n_test"],
            dim=settings["dim"],
            t_end=T,
            activation=act,
            dtype=jnp.float64,
        )
        true = solve(prob, saveat=jnp.asarray(np.union1d(ts, times)), save_weights=True)
        runs[act] = {}
        for name, sched in SCHEDULES.items():
            grid = KernelGrid.from_solution(true, times, prob.model, prob.data, schedule=sched)
            p = ScheduledKernelProblem(grid, prob.data, sched, Linear(), tspan=(0.0, T))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ScheduleRangeWarning)
                sol = solve(p, saveat=jnp.asarray(ts), rtol=1e-10, atol=1e-12)
            res = np.asarray(sol.train - sol.y_train).reshape(ts.size, -1)
            r = np.linalg.norm(res, axis=1)
            env = certify_residual(grid, res[0], ts, sched, Linear(), substeps=settings["substeps"])
            upper, lower, uniform = (np.asarray(a) for a in (env.upper, env.lower, env.uniform))
            runs[act][name] = {
                "method": env.method,
                "holds": bool(np.all(r <= upper * (1 + 1e-6)) and np.all(r >= lower * (1 - 1e-6))),
                "r0": float(r[0]),
                "solved_end": float(r[-1]),
                "upper_end": float(upper[-1]),
                "lower_end": float(lower[-1]),
                "uniform_end": float(uniform[-1]),
                "uniform_over_solved_end": float(uniform[-1] / r[-1]),
                "upper_over_solved_end": float(upper[-1] / r[-1]),
                "lambda_star": float(
                    np.min(np.linalg.eigvalsh(np.asarray(grid.dense_train()))[:, 0])
                ),
                "curves": {
                    "t": ts.tolist(),
                    "solved": r.tolist(),
                    "upper": upper.tolist(),
                    "lower": lower.tolist(),
                    "uniform": uniform.tolist(),
                },  # fmt: skip
            }
            row = runs[act][name]
            log(
                f"{act} {name}: ‖r(T)‖ solved {row['solved_end']:.4g}, envelope "
                f"[{row['lower_end']:.4g}, {row['upper_end']:.4g}], "
                f"uniform {row['uniform_end']:.4g}"
                f" (holds: {row['holds']})"
            )
    record = {
        "study": "certificate",
        "settings": settings,
        "runs": runs,
        "seconds": time.perf_counter() - start,
    }
    if out:
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, "results.json"), record)
        plot_certificate(record, os.path.join(out, "certificate.png"))
    return record


def plot_certificate(record: dict, path: str) -> None:
    """‖r(t)‖ solved vs the uniform bound vs the envelope, per activation and schedule."""
    plt = pyplot()
    runs = record["runs"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=False)
    panels = [(a, s) for a in runs for s in runs[a]]
    for ax, (act, name) in zip(axes, panels, strict=False):
        c = runs[act][name]["curves"]
        ax.semilogy(c["t"], c["solved"], "k", lw=2, label="solved surrogate")
        ax.semilogy(c["t"], c["uniform"], "C3--", label="uniform bound (certify)")
        ax.semilogy(c["t"], c["upper"], "C0", label="envelope (certify_residual)")
        # A zero lower bound is drawn at the panel's floor (log axis).
        floor = 0.3 * min(c["solved"])
        lower = np.maximum(np.asarray(c["lower"]), floor)
        ax.fill_between(c["t"], lower, c["upper"], color="C0", alpha=0.15)
        ax.set_ylim(floor, 1.5 * max(c["uniform"]))
        ax.set_title(f"{act}, {name} schedule ({runs[act][name]['method']})", fontsize=9)
        ax.set_xlabel("t")
    axes[0].set_ylabel("‖u(t) − Y‖")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


NAME = "certify"
HELP = (
    "Certificates of scheduled-NTK grids on sine (ReLU and softplus, time and loss-level "
    "grids): the solved train residual against the uniform decay bound and the residual "
    "envelope of certify_residual."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="certificate-out")
    parser.add_argument("--quick", action="store_true", help="a small problem (about a minute)")


def run(args) -> int:
    # The bounds are compared with solves at rtol 1e-10: float64 keeps that meaningful.
    jax.config.update("jax_enable_x64", True)
    certificate_study(args.out, args.quick, log=lambda s: print(s, flush=True))
    print(f"wrote {os.path.join(args.out, 'results.json')} and certificate.png")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
