"""Grid tuning by adjoints: gradient checks, adjoint agreement, optimisers, bad input."""

import functools
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest
from helpers import central_differences

import ntkode as nk
from ntkode import schedules as S
from ntkode._tuning._objective import (
    _value,
    logits_to_nodes,
    nodes_to_logits,
    objective_and_gradient,
)
from ntkode._tuning._spectrum import leading_directions, rescale
from ntkode._tuning._tune import build_objective
from ntkode.tuning import ScheduleNodes, TimeNodes

T = 2.0
TS = jnp.linspace(0.0, T, 21)


@functools.cache
def _setup(linear=False):
    """A tiny softplus MLP (or a linear model) and its true flow, weights saved, float64."""
    key1, key2 = jax.random.split(jax.random.key(3))
    x, xs = jax.random.normal(key1, (8, 2)), jax.random.normal(key2, (4, 2))
    data = nk.Dataset(x, jnp.sin(x.sum(1)), xs, jnp.sin(xs.sum(1)))
    if linear:
        model = eqx.nn.Linear(2, "scalar", key=jax.random.key(2))
    else:
        model = eqx.nn.MLP(2, "scalar", 8, 1, activation=jax.nn.softplus, key=jax.random.key(0))
    ref = nk.solve(
        nk.GradientFlowProblem(model, data, tspan=(0.0, T), learning_rate=2.0),
        saveat=TS,
        save_weights=True,
        rtol=1e-11,
        atol=1e-12,
    )
    return data, model, ref


def _problem(schedule=S.Time(), times=(0.0, 0.6, 1.2, 2.0), linear=False):
    data, model, ref = _setup(linear)
    grid = nk.KernelGrid.from_solution(ref, jnp.asarray(times), model, data, schedule=schedule)
    return nk.ScheduledKernelProblem(grid, data, schedule, tspan=(0.0, T), learning_rate=2.0)


# Constant steps make the discrete solution a smooth function of the nodes, so
# RecursiveCheckpointAdjoint's gradient is the exact derivative of what finite differences see.
CONSTANT = dict(stepsize_controller=diffrax.ConstantStepSize(), dt0=0.01)


def _central_differences(obj, z, h=1e-5):
    return central_differences(lambda zz: _value(obj, zz), z, h)


def _off_lattice(nodes):
    """Problem, reference and node kind with nodes off the solver's step lattice and off the
    saved times (where the weights have kinks)."""
    times = (0.0, 0.637, 1.291, 2.0)
    p = _problem()
    _, model, ref = _setup()
    if nodes == "schedule":
        p = eqx.tree_at(lambda q: q.grid.nodes, p, jnp.asarray(times))
        return p, ref, ScheduleNodes()
    return p, ref, TimeNodes(model, times=times)


def test_parameterisation_keeps_order_and_inverts():
    nodes = jnp.array([0.0, 0.3, 1.7, 1.8, 5.0])
    z = nodes_to_logits(nodes)
    assert z.shape == (3,)
    np.testing.assert_allclose(logits_to_nodes(z, 0.0, 5.0), nodes, atol=1e-14)
    # Any logits, however extreme, give strictly increasing nodes inside [lo, hi].
    for z in (jnp.array([40.0, -40.0, 3.0]), jnp.array([-700.0, 0.0, 700.0])):
        x = logits_to_nodes(z, 0.0, 5.0)
        assert bool(jnp.all(jnp.diff(x) >= 0)) and x[0] == 0.0 and x[-1] == 5.0


@pytest.mark.parametrize("nodes", ["schedule", pytest.param("time", marks=pytest.mark.slow)])
def test_gradient_equals_central_differences(nodes):
    p, ref, kind = _off_lattice(nodes)
    obj, z0 = build_objective(p, ref, nodes=kind, **CONSTANT)
    value, grad = objective_and_gradient(obj, z0, obj.options.adjoint)
    fd = _central_differences(obj, z0)
    assert float(value) > 0 and np.all(np.abs(fd) > 1e-8)
    # float64 central differences with h=1e-5: truncation ~h²·J''' ≈ 1e-10, round-off ~1e-11.
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4)


def test_power_objective_is_the_aggregate_over_times_and_differentiates():
    # J = c Σ_t (e_t / c)^{p/2}, e_t = ‖u_sur(t) − u_ref(t)‖², c = max_t e_t at the start:
    # recomputed here from an independent solve of the same surrogate.
    times = (0.0, 0.637, 1.291, 2.0)
    p = eqx.tree_at(lambda q: q.grid.nodes, _problem(), jnp.asarray(times))
    _, _, ref = _setup()
    obj, z0 = build_objective(p, ref, power=8, **CONSTANT)
    sol = nk.solve(p, saveat=ref.t, **CONSTANT)
    e = np.sum(np.asarray(sol.train - ref.train) ** 2, axis=1)
    c = e.max()
    np.testing.assert_allclose(float(obj.unit), c, rtol=1e-10)
    np.testing.assert_allclose(float(_value(obj, z0)), c * np.sum((e / c) ** 4), rtol=1e-8)
    # p = 2 is least squares, unchanged.
    obj2, _ = build_objective(p, ref, **CONSTANT)
    np.testing.assert_allclose(float(_value(obj2, z0)), e.sum(), rtol=1e-8)
    value, grad = objective_and_gradient(obj, z0, obj.options.adjoint)
    fd = _central_differences(obj, z0)
    assert np.all(np.abs(fd) > 1e-10 * float(value))
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4)
    for bad in (3, 1.0, float("inf"), True, "max"):
        with pytest.raises(ValueError, match="`power` must be 2"):
            build_objective(p, ref, power=bad)


def test_spectrum_rescale_is_the_kernel_of_rescaled_train_jacobians():
    # Θ = J Jᵀ, Θ_* = J_* Jᵀ; with S = I + U (diag(e^b) − 1) Uᵀ the tuned kernels must be
    # those of the train Jacobian S J: (S J)(S J)ᵀ and J_* (S J)ᵀ, built here densely.
    keys = jax.random.split(jax.random.key(5), 4)
    G, n, m, p, k = 3, 6, 4, 9, 2
    jt = jax.random.normal(keys[0], (G, n, p))
    js = jax.random.normal(keys[1], (G, m, p))
    kt = jt @ jnp.swapaxes(jt, 1, 2)
    ks = js @ jnp.swapaxes(jt, 1, 2)
    grid = nk.KernelGrid(jnp.arange(G, dtype=float), kt, ks)
    u = leading_directions(grid, k)
    b = jax.random.normal(keys[2], (G, k))
    problem = _problem()
    problem = eqx.tree_at(lambda q: q.grid, problem, grid)
    out = rescale(problem, u, b).grid
    for g in range(G):
        lam, vec = np.linalg.eigh(np.asarray(kt[g]))
        np.testing.assert_allclose(
            np.abs(np.asarray(u[g]).T @ vec[:, -k:][:, ::-1]), np.eye(k), atol=1e-10
        )
        s = np.eye(n) + np.asarray(u[g]) @ np.diag(np.expm1(np.asarray(b[g]))) @ np.asarray(u[g]).T
        sj = s @ np.asarray(jt[g])
        np.testing.assert_allclose(out.kernel_train[g], sj @ sj.T, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            out.kernel_test[g], np.asarray(js[g]) @ sj.T, rtol=1e-10, atol=1e-10
        )
        # Along its leading eigenvectors the kernel's eigenvalues scale by e^{2b}; the rest stay.
        want = np.concatenate([lam[:-k], (lam[-k:][::-1] * np.exp(2 * np.asarray(b[g])))])
        np.testing.assert_allclose(
            np.sort(np.linalg.eigvalsh(out.kernel_train[g])), np.sort(want), rtol=1e-9, atol=1e-9
        )


@pytest.mark.parametrize("nodes", ["schedule", pytest.param("time", marks=pytest.mark.slow)])
def test_spectrum_tuning_gradient_and_result(nodes):
    p, ref, kind = _off_lattice(nodes)
    obj, z0 = build_objective(p, ref, nodes=kind, spectrum=2, **CONSTANT)
    assert z0.shape == (2 + 4 * 2,) and not np.any(np.asarray(z0[2:]))
    # Zero log-scales are the untuned surrogate.
    plain, zp = build_objective(p, ref, nodes=kind, **CONSTANT)
    np.testing.assert_allclose(float(_value(obj, z0)), float(_value(plain, zp)), rtol=1e-12)
    value, grad = objective_and_gradient(obj, z0, obj.options.adjoint)
    fd = _central_differences(obj, z0)
    assert float(value) > 0 and np.all(np.abs(fd[2:]) > 1e-10)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4)
    res = nk.tune_grid(
        p,
        ref,
        nodes=kind,
        spectrum=2,
        steps=3,
        optimiser=optx.LevenbergMarquardt(1e-8, 1e-10),
        **CONSTANT,
    )
    assert res.spectrum_scales is not None and res.spectrum_scales.shape == (4, 2)
    assert res.objective < res.initial_objective
    # The returned problem is the one whose objective is reported.
    sol = nk.solve(res.problem, saveat=ref.t, **CONSTANT)
    np.testing.assert_allclose(
        float(np.sum(np.asarray(sol.train - ref.train) ** 2)), res.objective, rtol=1e-6
    )


def test_spectrum_bad_values_are_refused():
    p = _problem()
    _, model, ref = _setup()
    for bad in (-1, 1.5, True, "top"):
        with pytest.raises(ValueError, match="`spectrum` must be a non-negative integer"):
            nk.tune_grid(p, ref, spectrum=bad, steps=1)
    with pytest.raises(ValueError, match="smaller than the kernel size n·k = 8"):
        nk.tune_grid(p, ref, spectrum=8, steps=1)
    with pytest.raises(ValueError, match="`spectrum` rescales dense node kernels"):
        low = eqx.tree_at(lambda q: q.grid, p, p.grid.compress(4))
        nk.tune_grid(low, ref, spectrum=2, steps=1)


@pytest.mark.slow
def test_adjoints_agree():
    # Smooth (C²) weights: with hat functions the kernel has kinks in t at the nodes and the
    # discretise-then-optimise gradient converges only like the local step size there
    # (measured 0.4% from BacksolveAdjoint at rtol 1e-10), which would test the kinks, not
    # the adjoints.
    p = eqx.tree_at(lambda q: q.interpolation, _problem(), S.Smoothstep(order=2))
    _, model, ref = _setup()
    grads = {}
    # (BacksolveAdjoint is refused by SolveOptions: unstable on dissipative training flows.)
    for adjoint in (
        diffrax.RecursiveCheckpointAdjoint(),
        diffrax.DirectAdjoint(),
        diffrax.ForwardMode(),
    ):
        # Tight tolerances: every adjoint then approximates the same continuous gradient.
        obj, z0 = build_objective(p, ref, adjoint=adjoint, rtol=1e-10, atol=1e-12)
        grads[type(adjoint).__name__] = np.asarray(objective_and_gradient(obj, z0, adjoint)[1])
    base = grads["RecursiveCheckpointAdjoint"]
    # ForwardMode differentiates the same discrete solve: round-off only.
    np.testing.assert_allclose(grads["ForwardMode"], base, rtol=1e-8)
    # DirectAdjoint differentiates the same discrete solve too.
    np.testing.assert_allclose(grads["DirectAdjoint"], base, rtol=1e-8)


@pytest.mark.slow
def test_linear_model_objective_is_zero_and_stays_zero():
    # A linear model's NTK never changes: every grid is exact, J = 0 up to solver tolerance.
    p = _problem(linear=True)
    data, model, ref = _setup(linear=True)
    scale = float(jnp.sum((ref.train - ref.y_train) ** 2))
    for nodes in (ScheduleNodes(), TimeNodes(model)):
        res = nk.tune_grid(p, ref, nodes=nodes, steps=3, rtol=1e-10, atol=1e-12, optimiser=None)
        # rtol 1e-10 solves of both flows: J / Σ‖u - Y‖² at round-off level.
        assert res.initial_objective < 1e-16 * scale
        assert max(res.history) < 1e-16 * scale
        assert res.objective <= res.initial_objective


@pytest.mark.parametrize(
    "optimiser, adjoint",
    [
        (optax.adam(0.5), None),
        (optx.BFGS(1e-8, 1e-10), None),
        # Few parameters, many residuals: forward mode builds the Jacobian in 2 JVPs.
        (optx.LevenbergMarquardt(1e-8, 1e-10), diffrax.ForwardMode()),
    ],
)
def test_tuning_returns_best_iterate_and_reduces_error(optimiser, adjoint):
    p = _problem()
    _, model, ref = _setup()
    res = nk.tune_grid(p, ref, optimiser=optimiser, adjoint=adjoint, steps=10)
    assert res.success and res.result == nk.RESULTS.successful, res.message
    # The reported final objective is the best seen, never above the initial one...
    assert res.objective == min(res.history) <= res.initial_objective
    # ... and is what the returned problem actually achieves (re-solved independently).
    obj, z = build_objective(res.problem, ref)
    np.testing.assert_allclose(float(_value(obj, z)), res.objective, rtol=1e-10)
    assert bool(jnp.all(jnp.diff(res.nodes) > 0))
    np.testing.assert_allclose(res.nodes[jnp.array([0, -1])], p.grid.nodes[jnp.array([0, -1])])
    # Uniform nodes on a smooth problem leave room: the tuned grid is better.
    assert res.objective < 0.9 * res.initial_objective


@pytest.mark.slow
def test_time_nodes_on_loss_schedule_move_kernels():
    p = _problem(schedule=S.LossLevel())
    _, model, ref = _setup()
    res = nk.tune_grid(p, ref, nodes=TimeNodes(model), steps=3, optimiser=optax.adam(0.2))
    assert res.objective <= res.initial_objective
    # Loss-scheduled nodes increase while their times decrease (latest time first).
    assert bool(jnp.all(jnp.diff(res.nodes) > 0))
    assert bool(jnp.all(jnp.diff(res.problem.grid.times) < 0))
    # The tuned kernels are the NTKs at the tuned times (checked at one interior node).
    params = jax.tree.map(lambda w: w[None], _interp_weights(ref, res.problem.grid.times[1]))
    g = nk.KernelGrid.from_params(params, model, _setup()[0], jnp.zeros(1))
    np.testing.assert_allclose(res.problem.grid.kernel_train[1], g.kernel_train[0], rtol=1e-10)


def _interp_weights(ref, t):
    i = int(np.searchsorted(np.asarray(ref.t), float(t), side="right") - 1)
    a = (t - ref.t[i]) / (ref.t[i + 1] - ref.t[i])
    return jax.tree.map(lambda w: w[i] + a * (w[i + 1] - w[i]), ref.weights)


def test_float32_tuning_runs():
    data, model, ref = _setup()
    data32 = data.astype(jnp.float32)
    ref32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, ref)
    grid = _problem().grid
    grid32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, grid)
    p = nk.ScheduledKernelProblem(grid32, data32, tspan=(0.0, T), learning_rate=2.0)
    res = nk.tune_grid(p, ref32, steps=3, optimiser=optax.adam(0.3))
    assert res.problem.grid.nodes.dtype == jnp.float32
    assert res.success and res.objective < res.initial_objective


# ---------------------------------------------------------------- bad input


def test_reference_on_other_data_is_rejected():
    p = _problem()
    _, _, ref = _setup()
    other = eqx.tree_at(lambda s: s.y_train, ref, ref.y_train + 1.0)
    with pytest.raises(ValueError, match="different data"):
        nk.tune_grid(p, other, steps=1)


def test_nodes_outside_time_span_are_rejected():
    p = _problem()
    _, model, ref = _setup()
    with pytest.raises(ValueError, match="outside the time span"):
        nk.tune_grid(p, ref, nodes=TimeNodes(model, times=(0.0, 0.5, 1.0, 3.0)), steps=1)
    far = eqx.tree_at(lambda q: q.grid.nodes, p, jnp.array([-1.0, 0.6, 1.2, 2.0]))
    with pytest.raises(ValueError, match="outside the time span"):
        nk.tune_grid(far, ref, steps=1)


def test_other_bad_input():
    p = _problem()
    _, model, ref = _setup()
    noweights = eqx.tree_at(lambda s: s.weights, ref, None)
    with pytest.raises(ValueError, match="save_weights"):
        nk.tune_grid(p, noweights, nodes=TimeNodes(model))
    with pytest.raises(ValueError, match="needs `model`"):
        TimeNodes(None)
    with pytest.raises(ValueError, match="dense ntkode.KernelGrid, not a LowRankKernelGrid"):
        low = eqx.tree_at(lambda q: q.grid, p, p.grid.compress(4))
        nk.tune_grid(low, ref, nodes=TimeNodes(model))
    with pytest.raises(ValueError, match="at least 3"):
        nk.tune_grid(_problem(times=(0.0, 2.0)), ref)
    with pytest.raises(TypeError, match="optimiser"):
        nk.tune_grid(p, ref, optimiser="adam", steps=1)


def test_node_kind_strings_are_refused_with_the_object_to_pass():
    p = _problem()
    _, _, ref = _setup()
    with pytest.raises(TypeError, match=r"not the string 'time': pass nodes=ntkode\.tuning\.Time"):
        nk.tune_grid(p, ref, nodes="time", steps=1)
    with pytest.raises(TypeError, match=r"pass nodes=ntkode\.tuning\.ScheduleNodes\(\)"):
        nk.tune_grid(p, ref, nodes="schedule", steps=1)
    with pytest.raises(TypeError, match="ScheduleNodes.. or ntkode.tuning.TimeNodes"):
        nk.tune_grid(p, ref, nodes="kernel", steps=1)
    with pytest.raises(TypeError, match="node kind from ntkode.tuning"):
        nk.tune_grid(p, ref, nodes=S.Time(), steps=1)
    # The loose arguments of the time kind now travel with it.
    with pytest.raises(TypeError, match=r"`model=` belongs to the node kind now: pass nodes=ntk"):
        nk.tune_grid(p, ref, nodes=ScheduleNodes(), model=_setup()[1], steps=1)


def _nan_after(step):
    """An optax transformation whose updates turn NaN from `step` on (a diverging optimiser)."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        bad = count >= step
        return jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates), count + 1

    return optax.GradientTransformation(init, update)


def test_non_finite_objective_stops_with_step_and_last_good_nodes():
    p = _problem()
    _, _, ref = _setup()
    opt = optax.chain(optax.adam(0.1), _nan_after(2))
    res = nk.tune_grid(p, ref, optimiser=opt, steps=5)
    assert res.result == nk.RESULTS.nonfinite_objective and not res.success
    assert "step 3" in res.message and "Last good nodes" in res.message
    assert res.message.startswith(nk.RESULTS[nk.RESULTS.nonfinite_objective])
    assert np.all(np.isfinite(np.asarray(res.nodes))) and np.isfinite(res.objective)
    assert res.objective <= res.initial_objective
    with pytest.raises(RuntimeError, match="step 3"):
        nk.tune_grid(p, ref, optimiser=opt, steps=5, throw=True)


class _NaNSlope(S.AbstractInterpolation):
    """Linear weights whose value is exact but whose derivative in the nodes is NaN
    (0 · ∞ from the square root at zero): a finite objective with a non-finite gradient."""

    support: ClassVar[int] = 2
    convex: ClassVar[bool] = True

    def local(self, s, nodes):
        idx, w = S.Linear().local(s, nodes)
        return idx, w + 0.0 * jnp.sqrt(nodes[1] - nodes[1])


def test_non_finite_gradient_gives_its_code():
    p = eqx.tree_at(lambda q: q.interpolation, _problem(), _NaNSlope())
    _, _, ref = _setup()
    res = nk.tune_grid(p, ref, optimiser=optax.adam(0.1), steps=3)
    assert res.result == nk.RESULTS.nonfinite_gradient and not res.success
    assert "step 0" in res.message and res.num_steps == 0
    # The initial nodes are kept, with their (finite) objective.
    np.testing.assert_allclose(res.nodes, p.grid.nodes)
    assert np.isfinite(res.objective) and res.objective == res.initial_objective
    with pytest.raises(RuntimeError, match="gradient became non-finite"):
        nk.tune_grid(p, ref, optimiser=optax.adam(0.1), steps=3, throw=True)


@pytest.mark.slow
def test_compare_quick_tune_writes_rows_and_figure(tmp_path):
    # ~2 minutes on 2 busy cores: the quick study plus tuning of its G=8 grids.
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ntkode", "compare", "--quick", "--tune", "--no-progress"]
    proc = subprocess.run(
        cmd + ["--out", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    for name in ("time", "loss"):
        row = rows[f"tuned_{name}_G8"]
        # The best iterate is kept: the tuned objective never exceeds the uniform grid's.
        assert row["objective"] <= row["initial_objective"]
        assert len(row["nodes"]) == 8 and row["error_reduction"] > 0
    assert (out / "tuned_nodes.png").stat().st_size > 10_000
    assert "tuned_time_G8" in proc.stdout
