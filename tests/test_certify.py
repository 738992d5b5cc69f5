"""Residual envelopes of scheduled MSE surrogates (`certify_residual`): closed forms where the
envelope must be exact, containment of solved trajectories on random PSD grids and on grids
along true ReLU/softplus flows, and the envelope's convergence in `substeps`."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import psd_kernels, small_data

import ntkode as nk
from ntkode import schedules as S

# Solver tolerance of the surrogate solves below: containment is checked to 1e-7 relative.
RTOL = 1e-7
SOLVE = dict(rtol=1e-10, atol=1e-12)


def _residuals(problem, ts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.ScheduleRangeWarning)
        sol = nk.solve(problem, saveat=jnp.asarray(ts), **SOLVE)
    res = np.asarray(sol.train - sol.y_train).reshape(len(ts), -1)
    return np.linalg.norm(res, axis=1), np.asarray(sol.train[0] - sol.y_train)


def _contains(env, r):
    upper, lower, uniform = map(np.asarray, (env.upper, env.lower, env.uniform))
    assert np.all(r <= upper * (1 + RTOL)), np.max(r / upper)
    assert np.all(r >= lower * (1 - RTOL) - 1e-12), np.min(r - lower)
    assert np.all(upper <= uniform * (1 + 1e-12))


def _random_problem(sched, interp, nodes, kernels, eta=2.0):
    data = small_data(n=8)
    grid = nk.KernelGrid(jnp.asarray(nodes), kernels)
    u0 = 3 * jnp.ones((8, 1))
    p = nk.ScheduledKernelProblem(
        grid, data, sched, interp, tspan=(0.0, 6.0), learning_rate=eta, u0_train=u0
    )
    return grid, p


def test_single_kernel_envelope_is_exact():
    # One kernel: r(t) = exp(-ηΘt/n) r0, and the envelope has zero width.
    kernel = psd_kernels(jax.random.key(0), 1, 8, shift=0.1)
    grid = nk.KernelGrid(jnp.array([0.0]), kernel)
    r0 = jax.random.normal(jax.random.key(1), (8, 1))
    ts = np.linspace(0.0, 3.0, 7)
    env = nk.certify_residual(grid, r0, ts, learning_rate=2.0)
    exact = [jnp.linalg.norm(jax.scipy.linalg.expm(-2.0 * kernel[0] * t / 8) @ r0) for t in ts]
    np.testing.assert_allclose(env.upper, exact, rtol=1e-10)
    np.testing.assert_allclose(env.lower, exact, rtol=1e-10)
    assert env.method == "time-envelope"


@pytest.mark.parametrize(
    "interp",
    [
        S.Linear(),
        S.Smoothstep(),
        S.PiecewiseConstant("nearest"),
        S.PiecewiseConstant("left"),
        S.PiecewiseConstant("average", 3),
    ],
    ids=["linear", "smoothstep", "nearest", "left", "average"],
)
def test_time_envelope_contains_solved_residuals(interp):
    # Nodes inside the time span: both clamped ends are crossed too.
    kernels = psd_kernels(jax.random.key(5), 4, 8, rank=3, shift=0.05)
    grid, p = _random_problem(S.Time(), interp, [0.5, 1.5, 3.0, 4.0], kernels)
    ts = np.linspace(0.0, 6.0, 41)
    r, r0 = _residuals(p, ts)
    env = nk.certify_residual(grid, r0, ts, S.Time(), interp, 2.0, substeps=8)
    _contains(env, r)
    # Not vacuous: the upper envelope is well below the uniform bound at the end.
    assert float(env.upper[-1]) < 0.5 * float(env.uniform[-1])


def test_time_envelope_exact_for_nearest_and_converges_for_linear():
    kernels = psd_kernels(jax.random.key(6), 4, 8, rank=3, shift=0.05)
    ts = np.linspace(0.0, 6.0, 25)
    # Nearest-node switching with an even number of pieces per interval: every switch is a
    # piece boundary, so each piece is one fixed kernel and the envelope is the solution.
    grid, p = _random_problem(S.Time(), S.PiecewiseConstant(), [0.0, 2.0, 4.0, 6.0], kernels)
    r, r0 = _residuals(p, ts)
    env = nk.certify_residual(grid, r0, ts, S.Time(), S.PiecewiseConstant(), 2.0, substeps=2)
    np.testing.assert_allclose(env.upper, r, rtol=1e-7)
    np.testing.assert_allclose(env.lower, r, rtol=1e-7)
    # Linear interpolation: the width is O(1/substeps) (Cauchy–Schwarz on δ = 1/(2·substeps)).
    grid, p = _random_problem(S.Time(), S.Linear(), [0.0, 2.0, 4.0, 6.0], kernels)
    r, r0 = _residuals(p, ts)
    widths = []
    for m in (4, 16):
        env = nk.certify_residual(grid, r0, ts, S.Time(), S.Linear(), 2.0, substeps=m)
        _contains(env, r)
        widths.append(float(jnp.max(env.upper - env.lower)))
    assert 3.0 < widths[0] / widths[1] < 5.0, widths


@pytest.mark.parametrize("sched", [S.LossLevel(), S.ResidualNorm()], ids=["loss", "norm"])
@pytest.mark.parametrize("interp", [S.Linear(), S.PiecewiseConstant()], ids=["linear", "pc"])
def test_norm_levels_contain_solved_residuals(sched, interp):
    # The worst-conditioned kernel sits at the lowest level, which the run never reaches in
    # t ≤ 6: the uniform bound pays for it from the start, the level-wise bound only below it.
    base = psd_kernels(jax.random.key(7), 4, 8, rank=3)
    kernels = base + jnp.array([0.02, 1.0, 1.0, 1.0])[:, None, None] * jnp.eye(8)
    data = small_data(n=8)
    r0 = 3 * jnp.ones((8, 1)) - data.y_train.reshape(8, 1)
    # Levels from ‖r0‖² down to 1e-3‖r0‖² (the loss level is log(‖r‖²/2n), the norm log‖r‖).
    sq = float(jnp.sum(r0**2)) * np.array([1e-3, 1e-2, 1e-1, 1.0])
    nodes = np.log(sq / 16) if isinstance(sched, S.LossLevel) else 0.5 * np.log(sq)
    grid, p = _random_problem(sched, interp, nodes, kernels)
    ts = np.linspace(0.0, 6.0, 41)
    r, r0_solved = _residuals(p, ts)
    np.testing.assert_allclose(r0_solved, r0)
    env = nk.certify_residual(grid, r0, ts, sched, interp, 2.0)
    assert env.method == "norm-levels"
    _contains(env, r)
    assert float(env.upper[-1]) < 0.5 * float(env.uniform[-1])


def test_other_schedules_get_the_uniform_bound():
    kernels = psd_kernels(jax.random.key(8), 3, 8, shift=0.1)
    grid = nk.KernelGrid(jnp.array([0.0, 1.0, 2.0]), kernels)
    r0 = jnp.ones((8, 1))
    ts = np.linspace(0.0, 2.0, 5)
    sched = S.Custom(lambda t, u, y: jnp.sum(u))
    env = nk.certify_residual(grid, r0, ts, sched, learning_rate=2.0)
    assert env.method == "uniform"
    np.testing.assert_allclose(env.upper, nk.certify(grid, 2.0).bound(ts, jnp.linalg.norm(r0)))


@pytest.mark.slow  # about 15 s of CPU each (a true flow with weights, two grids, two solves)
@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_envelopes_contain_surrogates_on_sine_grids(activation):
    # Grids along a true flow (a small sine network): the kernels move and rotate.
    prob = nk.sine_problem(
        width=16, n_train=16, n_test=4, dim=3, t_end=20.0, activation=activation, dtype=jnp.float64
    )
    times = np.array([0.0, 5.0, 10.0, 20.0])
    ts = np.linspace(0.0, 20.0, 21)
    sol = nk.solve(prob, saveat=jnp.asarray(np.union1d(ts, times)), save_weights=True)
    for sched in (S.Time(), S.LossLevel()):
        grid = nk.KernelGrid.from_solution(sol, times, prob.model, prob.data, schedule=sched)
        p = nk.ScheduledKernelProblem(grid, prob.data, sched, S.Linear(), tspan=(0.0, 20.0))
        r, r0 = _residuals(p, ts)
        env = nk.certify_residual(grid, r0, ts, sched, S.Linear(), substeps=8)
        _contains(env, r)


def test_bad_input():
    kernels = psd_kernels(jax.random.key(9), 2, 4, shift=0.1)
    grid = nk.KernelGrid(jnp.array([0.0, 1.0]), kernels)
    ts = np.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="`r0`"):
        nk.certify_residual(grid, jnp.ones((5, 1)), ts)
    with pytest.raises(ValueError, match="`t`"):
        nk.certify_residual(grid, jnp.ones((4, 1)), ts[::-1])
    with pytest.raises(ValueError, match="`substeps`"):
        nk.certify_residual(grid, jnp.ones((4, 1)), ts, substeps=0)
    with pytest.raises(TypeError, match="`schedule`"):
        nk.certify_residual(grid, jnp.ones((4, 1)), ts, "time")  # type: ignore[arg-type]
