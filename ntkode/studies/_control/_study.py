r"""Control study: learning rates designed on the scheduled-NTK surrogate, run on the network.

For each seed of a reference problem (full-batch gradient descent, mean MSE): **sine**
(an MLP regressing $\sin(\sum_i x_i)$) or **digits** (an MLP classifying scikit-learn's
8×8 digits, trained on mean MSE to the one-hot labels; see "Digits" below):

1. **The plant model.** A stable reference run of the network (gradient descent at
   $\eta = c_\text{ref}\,n/\lambda_{\max}(\Theta)$ with the true NTK re-measured every
   `segment` steps, $c_\text{ref} = 1$) is stopped at a loss well below the target; the
   kernels at its segment boundaries, placed at their loss levels $\log L$, form a
   [`ntkode.KernelGrid`][] on the scheduling variable `schedules.LossLevel()`, and
   [`ntkode.ScheduledDescentProblem`][] is the discrete-time LPV surrogate on it.
2. **Designed policies** (on the surrogate only): `inverse_sharpness`
   ($\eta(s) = 1.9\,n/\lambda_{\max}(\Theta(s))$ read off the grid) and `designed`
   (gain-scheduled node values optimised through $K$ surrogate steps by
   [`ntkode.design_policy`][]), both
   certified at every node; `designed_uncertified` (the same design with the stability limit
   lifted) and `warmup_inverse_sharpness` (20 steps at the best constant rate, beyond the
   limit, then `inverse_sharpness`), both uncertified.
3. **Baselines** (on the network): a grid search over constant rates (`best_constant`;
   its cost in network runs is recorded), the best constant rate that satisfies the same
   certificate on every seed's grid (`best_certified_constant`), and linear warm-up + cosine
   decay peaking at the best constant rate (`cosine`).
4. **Verification.** Every policy runs on the real equinox network (optax SGD, same
   initialisation) and on the surrogate; recorded are the steps to the target train loss,
   the losses after $K$ steps, divergence, the largest relative error of the surrogate's loss
   curve, the per-step certificate evaluated on both runs ([`ntkode.step_certificate`][]),
   and the true $\lambda_{\max}(\Theta_k)/n$ at a few steps (the catapult: Lewkowycz et al.
   2020; progressive sharpening: Cohen et al. 2021).

The linear model only describes training inside the stability limit: the constant-rate map
(steps to target on the network and on the surrogate for every rate of the grid search) shows
where the two part.

**Digits.** The reference digits problem ([`ntkode.studies.digits_problem`][]) trains on
softmax cross-entropy. Of the study's three parts, the discrete-time LPV model
($u_{k+1} = u_k - \eta_k\Theta(s_k)\nabla_u L$) and the designs through it hold for any
loss, but the per-step contraction certificate does not: it uses that the MSE residual map
$r \mapsto (I - \eta\Theta/n)\,r$ is linear, so its eigenvalues bound one step exactly;
the cross-entropy gradient is not linear in $u$, and a node-spectrum certificate for it
would need a bound on the softmax Hessian along the run, which the study does not derive.
So the study's digits problem is the same network and data trained on mean MSE to the
one-hot labels (a classifier in its own right: Hui & Belkin 2021, "Evaluation of neural
architectures trained with square loss vs cross-entropy in classification tasks"), with
$k = 10$ outputs and the $(nk)\times(nk)$ NTK; every part of the study, the certificate
included, is then what it is on sine.
"""

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._control._certificate import step_certificate
from ..._control._descent import Descent, descend, scheduled_values, warn_outside
from ..._control._design import HOLD, design_policy
from ..._control._network import GradientDescentProblem
from ..._control._policy import (
    AbstractLearningRatePolicy,
    Constant,
    Cosine,
    GainScheduled,
    InverseSharpness,
    Switched,
    scheduled_parts,
)
from ..._control._surrogate import ScheduledDescentProblem, without_test
from ..._core._kernel_flow import flatten_kernel
from ..._core._losses import mse
from ..._core._model import apply, partition
from ..._ntk._api import ntk
from ..._scheduled._certify import Certificate, certify
from ..._scheduled._dense import KernelGrid
from ..._scheduled._grid import AbstractKernelGrid
from ..._scheduled._interp import Linear
from ..._scheduled._problem import ScheduleRangeWarning
from ..._scheduled._schedule import LossLevel, Time
from .._problems import digits_problem, sine_problem
from .._run import StudyRecord
from ._summary import best_rate, summarise

#: The problems the study runs on, in the order `problem="all"` runs them.
PROBLEMS = ("sine", "digits")
#: The default target train loss, as a fraction of the initial one. Digits on MSE falls
#: 10× within about 15 steps at the best rates, which leaves no room to tell policies apart.
TARGET_RATIO = {"sine": 0.1, "digits": 0.01}
#: The default range of the constant-rate grid search (12 rates, log-spaced): on either
#: problem it spans rates certified at every node to rates beyond the classical limit
#: $2n/\lambda_{\max}$ at step 0 (digits on MSE is flatter than sine: its limit is higher).
RATES = {"sine": (0.02, 1.5), "digits": (0.05, 4.0)}


@eqx.filter_jit
def _lambda_max(model: Any, x, k: int):
    n = x.shape[0]
    return jnp.linalg.eigvalsh(flatten_kernel(ntk(model, x), n, n, k, "ntk"))[-1]


@eqx.filter_jit
def _linear_step(model: Any, x, u, u_next, y, eta, loss):
    """$\\lambda_{\\max}$ of the true NTK $\\Theta_k$ at a state, and how well the LPV step
    $u_k - \\eta_k\\Theta_k\\nabla_u L(u_k)$ *with that true kernel* predicts the network's
    next outputs `u_next`: the ratio of the two train-residual norms after the step, and
    the error of the step relative to the step the network took."""
    n, k = u.shape
    theta = flatten_kernel(ntk(model, x), n, n, k, "ntk")
    lam = jnp.linalg.eigvalsh(theta)[-1]
    linear = u.reshape(-1) - eta * theta @ loss.grad(u, y).reshape(-1)
    net, r = u_next.reshape(-1), y.reshape(-1)
    ratio = jnp.linalg.norm(linear - r) / jnp.linalg.norm(net - r)
    error = jnp.linalg.norm(net - linear) / jnp.linalg.norm(net - u.reshape(-1))
    return lam, ratio, error


def lambda_max(model: Any, x, k: int) -> float:
    """$\\lambda_{\\max}$ of the model's empirical NTK on `x`, the `(n k) × (n k)` train kernel
    of its `k` outputs (compiled once per model structure)."""
    return float(_lambda_max(model, x, k))


def _model_at(run: Descent, i: int, static: Any) -> Any:
    return eqx.combine(jax.tree.map(lambda a: a[i], run.params), static)


def loss_level_grid(
    net: GradientDescentProblem, models: Sequence[Any], levels: Sequence[float]
) -> AbstractKernelGrid:
    """The NTKs of `models` at their train losses `levels` (each below every earlier one),
    on the axis $\\log L$ of `schedules.LossLevel()`."""
    order = np.argsort(np.log(levels))
    nodes = np.log(np.asarray(levels))[order]
    return KernelGrid.from_params(
        [models[i] for i in order], net.model, net.data, jnp.asarray(nodes, net.data.y_train.dtype)
    )


def identified_error(
    plant: "Plant", policy: AbstractLearningRatePolicy, steps: int, every: int
) -> dict[str, Any]:
    r"""The surrogate's prediction error when its grid is identified on the network's own run
    under `policy` (kernels every `every` steps) instead of the reference run.

    The diagnosis of the prediction error: if it stays large, what is missing is not kernels
    of the right run but the nonlinearity of a single step (see `_linear_step`), compounded
    over the run; with `schedules.Time()` on the same kernels it would also not be the
    scheduling variable.
    """
    # Only train losses are compared: the network and its kernels without the test split.
    net = GradientDescentProblem(plant.net.model, without_test(plant.net.data), plant.net.loss)
    static = partition(net.model)[1]
    keep = list(range(0, steps + 1, every))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleRangeWarning)
        run_n = descend(net, policy, steps, save_params=tuple(keep))
        loss_n = np.asarray(run_n.train_loss)
        models, levels = [], []
        for i, k in enumerate(keep):
            if not levels or loss_n[k] < levels[-1]:
                models.append(_model_at(run_n, i, static))
                levels.append(float(loss_n[k]))
        out = {"every": every, "nodes": len(levels)}
        for name, schedule, grid in (
            ("loss_level", LossLevel(), loss_level_grid(net, models, levels)),
            (
                "time",
                Time(),
                KernelGrid.from_params(
                    [_model_at(run_n, i, static) for i in range(len(keep))],
                    net.model,
                    net.data,
                    jnp.asarray(np.asarray(run_n.time)[keep], net.data.y_train.dtype),
                ),
            ),
        ):
            sur = ScheduledDescentProblem.from_problem(grid, net, schedule=schedule)
            loss_s = np.asarray(descend(sur, policy, steps).train_loss)
            above = loss_n > plant.target
            out[name] = {
                "prediction_error": _relative_curve_error(loss_s, loss_n),
                "prediction_error_above_target": _relative_curve_error(
                    loss_s[above], loss_n[above]
                ),
            }
    return out


def reference_grid(
    net: GradientDescentProblem,
    floor: float,
    *,
    segment: int,
    max_segments: int,
    c_ref: float = 1.0,
) -> tuple[AbstractKernelGrid, dict[str, Any]]:
    r"""Kernels along a stable run of `net`, on the loss-level axis (see the module notes).

    Gradient descent at $c_\text{ref}\,n/\lambda_{\max}(\Theta)$, $\lambda_{\max}$ re-measured
    every `segment` steps, until the train loss is below `floor` (or `max_segments`). The
    nodes are the states at the segment boundaries whose loss is below every earlier one.
    """
    data = net.data
    n = data.n_train
    static = partition(net.model)[1]
    model = net.model
    models, levels, lams, steps = [model], [], [lambda_max(model, data.x_train, data.n_outputs)], 0
    times, clock = [0.0], 0.0  # the effective time τ = Σ η_j at each node
    loss = float(net.loss(apply(model, data.x_train), data.y_train))
    levels.append(loss)
    for _ in range(max_segments):
        run = descend(
            GradientDescentProblem(model, data, net.loss),
            Constant(c_ref * n / lams[-1]),
            segment,
            save_params=(segment,),
        )
        steps += segment
        clock += segment * c_ref * n / lams[-1]
        model = _model_at(run, 0, static)
        loss = float(run.train_loss[-1])
        if run.diverged or not np.isfinite(loss):
            raise RuntimeError("The reference run diverged; lower c_ref.")
        lam = lambda_max(model, data.x_train, data.n_outputs)
        if loss < levels[-1]:
            models.append(model)
            levels.append(loss)
            lams.append(lam)
            times.append(clock)
        if loss < floor:
            break
    grid = loss_level_grid(net, models, levels)
    info = {
        "reference_steps": steps,
        "nodes": len(levels),
        "reference_final_loss": levels[-1],
        "reference_lambda_max_over_n": [lam / n for lam in lams],
        "reference_times": times,
        "reference_loss_levels": levels,
    }
    return grid, info


def effective_time_grid(grid: AbstractKernelGrid, info: dict[str, Any]) -> AbstractKernelGrid:
    r"""The reference grid's kernels placed at the reference run's effective time
    $\tau_k = \sum_{j<k}\eta_j$ (`schedules.Time()`, the clock of [`ntkode.descend`][])
    instead of its loss levels.

    For gradient flow a time-varying $\eta$ only reparameterises time, so kernels at the
    same $\tau$ may transfer between policies; and unlike the loss level, $\tau$ does not
    feed the surrogate's own loss error back into the kernels it reads."""
    # loss_level_grid orders the nodes by log L, falling along the reference run.
    order = np.argsort(np.log(np.asarray(info["reference_loss_levels"])))
    times = np.asarray(info["reference_times"])[order]
    by_time = np.argsort(times)
    return eqx.tree_at(
        lambda g: (g.nodes, g.kernel_train, g.kernel_test),
        grid,
        (
            jnp.asarray(times[by_time], grid.nodes.dtype),
            grid.kernel_train[by_time],
            grid.kernel_test[by_time],
        ),
    )


def _relative_curve_error(a: np.ndarray, b: np.ndarray) -> float:
    """$\\max_k |a_k - b_k| / b_k$ over the run (infinite if either is non-finite)."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    return float(np.max(np.abs(a - b) / b))


class Plant(eqx.Module):
    """One seed's network, its surrogate, and what the study derives from them."""

    net: GradientDescentProblem
    surrogate: ScheduledDescentProblem
    surrogate_time: ScheduledDescentProblem  # train only, on the effective time τ
    target: float
    cap: float  # the largest constant rate certified until the target (see `build_plant`)
    spectra: Certificate  # the grid's node spectra, computed once for every certificate
    info: dict = eqx.field(static=True)


def network(settings: dict[str, Any], seed: int, dtype) -> GradientDescentProblem:
    """The seed's network, data and loss, from the settings' `"<problem>_problem"` arguments.

    Digits trains on mean MSE to the one-hot labels (see the module notes)."""
    name = settings["problem"]
    if name == "sine":
        return GradientDescentProblem.from_flow(
            sine_problem(**settings["sine_problem"], seed=seed, dtype=dtype)
        )
    flow = digits_problem(**settings["digits_problem"], seed=seed, dtype=dtype)
    return GradientDescentProblem(flow.model, flow.data, mse)


def build_plant(settings: dict[str, Any], seed: int, dtype) -> Plant:
    net = network(settings, seed, dtype)
    loss0 = float(net.loss(apply(net.model, net.data.x_train), net.data.y_train))
    target = settings["target_ratio"] * loss0
    grid, info = reference_grid(
        net,
        settings["floor_ratio"] * target,
        segment=settings["segment"],
        max_segments=settings["max_segments"],
        c_ref=settings["c_ref"],
    )
    sur = ScheduledDescentProblem.from_problem(grid, net, schedule=LossLevel())
    sur_time = ScheduledDescentProblem.from_problem(
        effective_time_grid(grid, info), net, schedule=Time()
    ).train_only()
    # A constant rate is certified until the target when η λ_max,g / n <= c_max at every node
    # a run from L0 to the target can activate: those at loss levels above the target's,
    # and the first one below it.
    spectra = certify(grid)
    lam = np.asarray(spectra.lambda_max)
    nodes = np.asarray(grid.nodes)
    first = max(int(np.searchsorted(nodes, np.log(target))) - 1, 0)
    cap = settings["c_max"] * net.data.n_train / float(lam[first:].max())
    info = {**info, "loss0": loss0, "target": target, "certified_cap": cap}
    return Plant(net, sur, sur_time, target, cap, spectra, info)


def inverse_sharpness(plant: Plant, c: float) -> InverseSharpness:
    r"""$c\,n/\lambda_{\max}$ read off the plant's grid, from its node spectra."""
    grid = plant.surrogate.grid
    return InverseSharpness(
        c, LossLevel(), grid.nodes, plant.spectra.lambda_max, grid.n_train, Linear()
    )


def evaluate(
    plant: Plant,
    policy: AbstractLearningRatePolicy,
    steps: int,
    save: Sequence[int],
    window: int | None = None,
    part: AbstractLearningRatePolicy | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`policy` on the network and on the surrogate: the row of numbers and the curves.

    The prediction error is measured over the first `window` steps (default: all), so that
    runs of different lengths are compared over the same horizon. `part`: the policy that
    `policy` runs, where it is a `OneOf` (its gain-scheduled parts' ranges are checked)."""
    data = plant.net.data
    n = data.n_train
    static = partition(plant.net.model)[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScheduleRangeWarning)
        run_n = descend(plant.net, policy, steps, save_params=tuple(save))
        run_s = descend(plant.surrogate, policy, steps)
        run_t = descend(plant.surrogate_time, policy, steps)
        cert_s = step_certificate(plant.surrogate, run_s, plant.spectra)
        cert_n = step_certificate(plant.surrogate, run_n, plant.spectra)
        if part is not None and part is not policy:
            for run in (run_n, run_s, run_t):
                for sched in scheduled_parts(part):
                    warn_outside(scheduled_values(sched.schedule, run), sched.nodes)
    left = sorted({str(w.message).split(";")[0] for w in caught})
    loss_n, loss_s = np.asarray(run_n.train_loss), np.asarray(run_s.train_loss)
    loss_t = np.asarray(run_t.train_loss)
    w = steps if window is None else window
    eta = np.asarray(run_n.eta)
    sharp, ratios, errors = [], [], []
    for i, j in enumerate(save):
        model = _model_at(run_n, i, static)
        if j < steps:
            out = _linear_step(
                model, data.x_train, run_n.train[j], run_n.train[j + 1], data.y_train,
                run_n.eta[j], plant.net.loss,
            )  # fmt: skip
            lam, ratio, error = (float(v) for v in out)
            ratios.append(ratio)
            errors.append(error)
        else:
            lam = lambda_max(model, data.x_train, data.n_outputs)
        sharp.append(lam / n)
    above = loss_n[: w + 1] > plant.target
    row = {
        "steps_to_target_network": run_n.steps_to(plant.target),
        "steps_to_target_surrogate": run_s.steps_to(plant.target),
        "final_train_loss_network": float(loss_n[-1]),
        "final_test_loss_network": float(run_n.test_loss[-1]),
        "final_train_loss_surrogate": float(loss_s[-1]),
        "final_test_loss_surrogate": float(run_s.test_loss[-1]),
        "diverged": run_n.diverged,
        "diverged_surrogate": run_s.diverged,
        "prediction_error": _relative_curve_error(loss_s[: w + 1], loss_n[: w + 1]),
        # The same error while the network is above the target (what steps to target use).
        "prediction_error_above_target": _relative_curve_error(
            loss_s[: w + 1][above], loss_n[: w + 1][above]
        ),
        # The same two errors and the steps to target of the surrogate scheduled on the
        # effective time τ_k (the same reference kernels; see `effective_time_grid`).
        "steps_to_target_surrogate_time": run_t.steps_to(plant.target),
        "prediction_error_time": _relative_curve_error(loss_t[: w + 1], loss_n[: w + 1]),
        "prediction_error_time_above_target": _relative_curve_error(
            loss_t[: w + 1][above], loss_n[: w + 1][above]
        ),
        # At the saved steps k < K: the LPV step with the network's true NTK at step k,
        # ‖r_lin,k+1‖ / ‖r_net,k+1‖ (< 1: the linear step is optimistic) and its error
        # relative to the network's step.
        "one_step_residual_ratio": ratios,
        "one_step_error": errors,
        "certificate_surrogate": cert_s.summary(),
        "certificate_network": cert_n.summary(),
        "sharpness_steps": list(save),
        "lambda_max_over_n_network": sharp,
        "eta_lambda_over_n_network": [
            float(eta[min(k, steps - 1)]) * s for k, s in zip(save, sharp, strict=True)
        ],
        "grid_left": left,
        "eta": eta.tolist(),
    }
    curves = {
        "loss_network": loss_n,
        "loss_surrogate": loss_s,
        "loss_surrogate_time": loss_t,
        "eta": eta,
        "eta_surrogate": np.asarray(run_s.eta),
        "stability_network": np.asarray(cert_n.stability),
        "stability_surrogate": np.asarray(cert_s.stability),
    }
    return row, curves


class OneOf(AbstractLearningRatePolicy):
    """The policy `policies[index]`, chosen at run time (`jax.lax.switch`).

    The study evaluates every $K$-step policy of a plant as one of the same bank, so the
    network's and the surrogates' runs are compiled once per plant instead of once per
    policy type."""

    policies: tuple[AbstractLearningRatePolicy, ...]
    index: Any = eqx.field(converter=jnp.asarray)

    def __call__(self, k, t, u, y, loss):
        branches = [lambda p=p: p(k, t, u, y, loss) for p in self.policies]
        return jax.lax.switch(self.index, branches)


def policy_bank(
    plant: Plant, settings: dict[str, Any], designs: dict[str, Any], best: float
) -> dict[str, AbstractLearningRatePolicy]:
    """The $K$-step policies of a seed in a fixed order and structure: the designed ones
    (rebuilt from their recorded node values) and those built on the best constant rate
    `best` (any positive value while the grid search is not finished)."""
    steps, sharp = settings["steps"], inverse_sharpness(plant, settings["c_max"])
    dtype = plant.net.data.y_train.dtype

    def gain(name):
        d = designs[name]
        nodes, values = jnp.asarray(d["nodes"]), jnp.asarray(d["node_values"])
        return GainScheduled(LossLevel(), nodes, values, HOLD)

    bank = {
        "inverse_sharpness": sharp,
        "designed": gain("designed"),
        "designed_uncertified": gain("designed_uncertified"),
        "best_constant": Constant(best),
        "cosine": Cosine(best, steps, warmup=steps // 10),
        "warmup_inverse_sharpness": Switched(Constant(best), sharp, at=settings["warmup"]),
    }
    # One dtype (and no weak types) for every leaf, so that every bank shares one compile.
    return jax.tree.map(lambda a: jnp.array(a, dtype) if eqx.is_inexact_array(a) else a, bank)


def evaluate_bank(
    rows: dict[str, Any],
    arrays: dict[str, np.ndarray],
    plant: Plant,
    bank: dict[str, AbstractLearningRatePolicy],
    names: Sequence[str],
    steps: int,
    save: Sequence[int],
) -> None:
    """`evaluate` the policies `names` of `bank`, each run as `OneOf` the whole bank."""
    policies = tuple(bank.values())
    order = list(bank)
    evaluate_into(
        rows,
        arrays,
        plant,
        {name: OneOf(policies, order.index(name)) for name in names},
        steps,
        save,
        parts={name: bank[name] for name in names},
    )


def evaluate_into(
    rows: dict[str, Any],
    arrays: dict[str, np.ndarray],
    plant: Plant,
    policies: dict[str, AbstractLearningRatePolicy],
    steps: int,
    save: Sequence[int],
    window: int | None = None,
    parts: dict[str, AbstractLearningRatePolicy] | None = None,
) -> None:
    """`evaluate` each of `policies`, adding its row and its curves (`"name.curve"`).

    `parts`: the policy each of `policies` runs, where it is a `OneOf` (for the
    range warnings of its gain-scheduled parts)."""
    for name, policy in policies.items():
        part = policy if parts is None else parts[name]
        rows[name], curves = evaluate(plant, policy, steps, save, window, part)
        arrays.update({f"{name}.{k}": v for k, v in curves.items()})


@eqx.filter_jit
def _constant_runs(problem, rates, steps: int):
    """The train losses `(R, K+1)` of `steps` steps at each of the constant `rates`, and
    whether each run's outputs stayed finite: one compiled run, vmapped over the rates (for
    the surrogate: the network's runs beyond the stability limit are chaotic, and a batched
    run rounds differently from the one that verifies the best rate; see `constant_map`)."""

    def one(eta):
        run = problem._descend(Constant(eta), steps, ())
        return run.train_loss, jnp.all(jnp.isfinite(run.train))

    return jax.vmap(one)(rates)


def _first_below(losses: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(losses <= target)
    return int(hit[0]) if hit.size else None


def constant_map(
    plant: Plant,
    rates: Sequence[float],
    steps: int,
    bank: Callable[[float], dict[str, AbstractLearningRatePolicy]],
    save: Sequence[int],
) -> list[dict[str, Any]]:
    """Steps to target on the network and on the surrogate for each constant rate.

    On the network each rate runs as the `best_constant` of `bank(rate)`, with the saved
    steps `save` of `evaluate`: the very program that later verifies the best rate. Beyond
    the stability limit (the catapult) the network's run is chaotic: in float32 another
    compiled program of the same run rounds differently, and on sine at η = 0.312 a run
    batched over the rates without the test split reached the target in 134 steps (median
    of 3 seeds) where this program took 185. The surrogate's runs, train split only, are
    batched over the rates."""
    dtype = plant.net.data.y_train.dtype
    etas = jnp.asarray(rates, dtype)
    loss_n, ok_n = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleRangeWarning)
        for eta in rates:
            policies = bank(eta)
            index = list(policies).index("best_constant")
            run = descend(
                plant.net, OneOf(tuple(policies.values()), index), steps, save_params=tuple(save)
            )
            loss_n.append(np.asarray(run.train_loss))
            ok_n.append(not run.diverged)
    loss_n = np.stack(loss_n)
    sur = plant.surrogate.train_only()
    loss_s, ok_s = (np.asarray(a) for a in _constant_runs(sur, etas, steps))
    return [
        {
            "eta": float(eta),
            "certified": bool(eta <= plant.cap),
            "steps_to_target_network": _first_below(loss_n[i], plant.target),
            "steps_to_target_surrogate": _first_below(loss_s[i], plant.target),
            "final_train_loss_network": float(loss_n[i, -1]),
            "final_train_loss_surrogate": float(loss_s[i, -1]),
            "diverged": not bool(ok_n[i]),
            "diverged_surrogate": not bool(ok_s[i]),
        }
        for i, eta in enumerate(rates)
    ]


def designed_policies(
    plant: Plant, settings: dict[str, Any], log: Callable[[str], Any]
) -> dict[str, tuple[AbstractLearningRatePolicy, dict[str, Any]]]:
    """The policies designed on the surrogate alone (the warm-up needs the grid search)."""
    sur, steps, c_max = plant.surrogate, settings["steps"], settings["c_max"]
    sharp = inverse_sharpness(plant, c_max)
    common = dict(
        target=plant.target, iterations=settings["design_iterations"], spectra=plant.spectra
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleRangeWarning)
        cert = design_policy(sur, steps, certified=True, c_max=c_max, **common)
        free = design_policy(sur, steps, certified=False, init=cert.policy, **common)
    out: dict[str, tuple[AbstractLearningRatePolicy, dict[str, Any]]] = {
        "inverse_sharpness": (sharp, {})
    }
    for name, d in (("designed", cert), ("designed_uncertified", free)):
        log(
            f"  {name}: objective {d.initial_objective:.1f} -> {d.objective:.1f} "
            f"(smooth steps to target) in {d.num_steps} iterations, {d.seconds:.0f} s"
        )
        design = {
            "objective": d.objective,
            "initial_objective": d.initial_objective,
            "iterations": d.num_steps,
            "seconds": d.seconds,
            "node_values": np.asarray(d.policy.values).tolist(),
            "nodes": np.asarray(d.policy.nodes).tolist(),
            "message": d.message,
        }
        out[name] = (d.policy, design)
    return out


def control_study(
    *,
    problem: str = "sine",
    seeds: Sequence[int] = (0, 1, 2),
    width: int = 256,
    depth: int | None = None,
    n_train: int = 128,
    n_test: int = 128,
    dim: int = 8,
    activation: str = "relu",
    steps: int = 400,
    target_ratio: float | None = None,
    rates: Sequence[float] | None = None,
    c_max: float = 1.9,
    warmup: int = 20,
    design_iterations: int = 40,
    segment: int = 50,
    max_segments: int = 40,
    floor_ratio: float = 0.5,
    baseline_horizon: int = 4,
    c_ref: float = 1.0,
    dtype=jnp.float32,
    out: str | None = None,
    resume: bool | None = None,
    log: Callable[[str], Any] = lambda s: None,
) -> dict[str, Any]:
    r"""Learning-rate control on **sine** or **digits**: designed on the surrogate, verified
    on the network.

    **Arguments:** `problem`, `"sine"` or `"digits"` (an MLP `64 → width^depth → 10` on
    `n_train` digits, mean MSE to the one-hot labels, the fixed 360 test images; see the
    module notes); the network's `width` and `depth` (default 2 hidden layers on sine, 1 on
    digits) and `n_train`; for sine also `n_test`, `dim` and `activation` (the
    `sine_problem` arguments); `seeds`; `steps` ($K$); `target_ratio` (the target train loss
    as a fraction of the initial one; default 0.1 on sine, 0.01 on digits); `rates`, the
    constant rates of the grid search (default 12 rates log-spaced over $[0.02, 1.5]$ on
    sine, $[0.05, 4]$ on digits);
    `c_max`, the certified bound on $\eta\lambda_{\max}/n$; `warmup`, the steps of the
    uncertified warm-up;
    `design_iterations`; `baseline_horizon`, the horizon of the (slow) best certified
    constant rate in units of $K$; the reference run's `segment`, `max_segments` and `floor_ratio`
    (it stops at `floor_ratio` times the target); `dtype`; `out` (results.json and the
    arrays of each finished seed, resumed on rerun) and `resume` as in
    `ntkode/studies/_run.py`.

    **Returns:** the study's record (see the command's `results.json`); its
    `summary["<problem>_problem"]` holds the arguments that rebuild each seed's problem
    (`ntkode.studies.sine_problem(**args, seed=s)` or `digits_problem(**args, seed=s)`, the
    latter with `loss = mse`).
    """
    if problem not in PROBLEMS:
        raise ValueError(f"`problem` must be one of {list(PROBLEMS)}, got {problem!r}.")
    rates = [float(r) for r in (np.geomspace(*RATES[problem], 12) if rates is None else rates)]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("`seeds` must name at least one seed.")
    if int(warmup) < 1 or int(warmup) >= steps:
        raise ValueError(f"`warmup` must lie in [1, steps); got {warmup} with steps = {steps}.")
    if target_ratio is None:
        target_ratio = TARGET_RATIO[problem]
    if not 0 < target_ratio < 1:
        raise ValueError(
            f"`target_ratio` = {target_ratio!r} must lie in (0, 1): the target is that "
            "fraction of the initial train loss."
        )
    if problem == "sine":
        problem_args = dict(
            width=width,
            depth=2 if depth is None else depth,
            n_train=n_train,
            n_test=n_test,
            dim=dim,
            activation=activation,
        )
    else:
        problem_args = dict(
            model="mlp", width=width, depth=1 if depth is None else depth, n_train=n_train
        )
    settings = {
        "problem": problem,
        f"{problem}_problem": problem_args,
        "loss": "mse",
        "seeds": seeds,
        "steps": int(steps),
        "target_ratio": float(target_ratio),
        "rates": rates,
        "c_max": float(c_max),
        "warmup": int(warmup),
        "design_iterations": int(design_iterations),
        "segment": int(segment),
        "max_segments": int(max_segments),
        "floor_ratio": float(floor_ratio),
        "baseline_horizon": int(baseline_horizon),
        "c_ref": float(c_ref),
        "dtype": jnp.dtype(dtype).name,
    }
    record = StudyRecord(out, "control", settings, parts="parts", resume=resume, log=log)
    save = sorted({k for k in (0, 5, 10, 20, 50, steps // 4, steps // 2) if k < steps} | {steps})
    plants: dict[int, Plant] = {}
    arrays_of: dict[str, dict[str, np.ndarray]] = {}  # the arrays of the parts computed here

    def plant(seed: int) -> Plant:
        if seed not in plants:
            plants[seed] = build_plant(settings, seed, dtype)
        return plants[seed]

    # Phase 1, per seed: the plant, the constant-rate map, the policies designed on it.
    for seed in seeds:
        key = f"seed{seed}"
        if key in record:
            continue
        log(f"seed {seed}: reference run and kernel grid")
        p = plant(seed)
        log(
            f"  {p.info['nodes']} nodes from {p.info['reference_steps']} steps; "
            f"λ_max/n {p.info['reference_lambda_max_over_n'][0]:.1f} → "
            f"{p.info['reference_lambda_max_over_n'][-1]:.1f}; certified cap η ≤ {p.cap:.3g}"
        )
        rows, arrays = {}, {}
        made = designed_policies(p, settings, log)
        designs = {k: v[1] for k, v in made.items()}
        log(f"  constant-rate map: {len(rates)} rates on the network and the surrogate")
        cmap = constant_map(
            p, rates, steps, lambda eta: policy_bank(p, settings, designs, eta), save
        )
        bank = policy_bank(p, settings, designs, p.cap)  # the best constant is not known yet
        evaluate_bank(rows, arrays, p, bank, list(made), steps, save)
        every = max(steps // 20, 1)
        log(f"  diagnosis: inverse_sharpness on a grid identified on its own run (every {every})")
        diagnosis = identified_error(p, made["inverse_sharpness"][0], steps, every)
        record.put(
            key,
            {
                "seed": seed,
                **p.info,
                "constant_map": cmap,
                "policies": rows,
                "designs": designs,
                "identified": diagnosis,
            },
            arrays=arrays,
        )
        arrays_of[key] = arrays

    # The grid search on the network, over every seed.
    by_rate = {eta: [record.get(f"seed{s}")["constant_map"][i] for s in seeds]
               for i, eta in enumerate(rates)}  # fmt: skip
    best = best_rate(by_rate)
    certified_rates = {
        eta: rows for eta, rows in by_rate.items() if all(r["certified"] for r in rows)
    }
    best_certified = best_rate(certified_rates) if certified_rates else None

    # Phase 2, per seed: the baselines and the warm-up (which start from the search's best).
    for seed in seeds:
        key = f"seed{seed}-baselines"
        if key in record:
            continue
        log(f"seed {seed}: baselines (best constant η = {best:.3g}) and the warm-up")
        p = plant(seed)
        # The largest constant rate certified until the target: on the surrogate a larger
        # certified rate contracts the slow modes faster (the constant-rate map shows
        # whether the network agrees).
        cap_rate = p.cap
        bank = policy_bank(p, settings, record.get(f"seed{seed}")["designs"], best)
        rows, arrays = {}, {}
        names = ["best_constant", "cosine", "warmup_inverse_sharpness"]
        evaluate_bank(rows, arrays, p, bank, names, steps, save)
        # The certified constant is slow: it gets a longer horizon, so that its steps to
        # the target are measured rather than censored at K.
        long = int(settings["baseline_horizon"]) * steps
        certified = {"best_certified_constant": Constant(cap_rate)}
        evaluate_into(rows, arrays, p, certified, long, [*save, long], window=steps)
        record.put(key, {"seed": seed, "policies": rows}, arrays=arrays)
        arrays_of[key] = arrays

    summary = summarise(record, seeds, rates, best, best_certified, settings)
    record.finish(summary=summary)
    result = record.payload("finished")
    for key in record.parts:
        if key not in arrays_of and record.has_arrays(key):
            arrays_of[key] = record.arrays(key)  # a resumed part: its arrays are on disk
    result["curves"] = {
        s: {**arrays_of.get(f"seed{s}", {}), **arrays_of.get(f"seed{s}-baselines", {})}
        for s in seeds
    }
    return result


__all__ = ["PROBLEMS", "control_study", "evaluate", "network", "reference_grid"]
