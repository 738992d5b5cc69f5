"""Scheduled-NTK surrogate: kernel grids, schedules, interpolation, exact and ODE solves."""

import functools
import warnings
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import psd_kernels as _psd, random_grid as _grid, rel_max as _rel, small_data as _data

import ntkode as nk
from ntkode import schedules as S

# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize(
    "interp",
    [
        S.Linear(),
        S.Smoothstep(),
        S.Smoothstep(order=2),
        S.PiecewiseConstant(),
        S.PiecewiseConstant(mode="left"),
        S.PiecewiseConstant(mode="average", substeps=3),
    ],
)
def test_weights_are_convex_and_interpolate(interp):
    nodes = jnp.array([-1.0, 0.0, 0.5, 2.0, 7.0])
    s = jnp.linspace(-3.0, 9.0, 241)
    w = jax.vmap(lambda x: interp.weights(x, nodes))(s)
    assert bool(jnp.all(w >= 0))
    # Sum to one up to round-off of 1 - a + a.
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-14)
    at_nodes = jax.vmap(lambda x: interp.weights(x, nodes))(nodes)
    if isinstance(interp, S.PiecewiseConstant) and interp.mode == "average":
        # Midpoint pieces: at node i < G the piece [s_i, s_i + h/3) carries 5/6 Θ_i + 1/6 Θ_i+1.
        np.testing.assert_allclose(at_nodes[1, 1:3], [5 / 6, 1 / 6], atol=1e-14)
    else:
        # Interpolations proper reproduce the grid kernel at its own node.
        np.testing.assert_allclose(at_nodes, jnp.eye(5))
    # Clamped outside: the end kernels.
    np.testing.assert_allclose(w[0], jnp.eye(5)[0])
    np.testing.assert_allclose(w[-1], jnp.eye(5)[-1])


def test_smoothstep_weights_are_c1():
    nodes = jnp.array([0.0, 1.0, 3.0])
    dw = jax.vmap(jax.jacfwd(lambda x: S.Smoothstep().weights(x, nodes)))
    # Derivatives just left and right of the inner node agree (C¹), unlike hat functions.
    eps = 1e-7
    np.testing.assert_allclose(dw(jnp.array([1 - eps])), dw(jnp.array([1 + eps])), atol=1e-6)
    lin = jax.vmap(jax.jacfwd(lambda x: S.Linear().weights(x, nodes)))
    assert float(jnp.max(jnp.abs(lin(jnp.array([1 - eps])) - lin(jnp.array([1 + eps]))))) > 0.4


# ---------------------------------------------------------------- agreement


def test_single_node_equals_frozen_flow():
    data = _data()
    grid = _grid(data, G=1, nodes=jnp.array([0.0]))
    frozen = nk.KernelFlowProblem(
        grid.kernel_train[0],
        data,
        tspan=(0.0, 3.0),
        kernel_test=grid.kernel_test[0],
        u0_train=jnp.ones((8, 1)),
    )
    ref = nk.solve(frozen, saveat=13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.ScheduleRangeWarning)
        for sched, interp in ((S.Time(), S.PiecewiseConstant()), (S.LossLevel(), S.Linear())):
            p = nk.ScheduledKernelProblem(
                grid, data, sched, interp, tspan=(0.0, 3.0), u0_train=jnp.ones((8, 1))
            )
            sol = nk.solve(p, saveat=13, rtol=1e-10, atol=1e-12)
            # Exact path: round-off; ODE path: rtol 1e-10 over a contracting flow.
            tol = 1e-12 if p.exact else 1e-8
            assert _rel(sol.train, ref.train) < tol
            assert _rel(sol.test, ref.test) < tol


def _pc_problem(dtype, mode):
    data = _data().astype(dtype)
    g = _grid(_data(), G=4)
    grid = nk.KernelGrid(
        g.nodes.astype(dtype), g.kernel_train.astype(dtype), g.kernel_test.astype(dtype)
    )
    return nk.ScheduledKernelProblem(
        grid, data, interpolation=S.PiecewiseConstant(mode, substeps=2), tspan=(0.0, 2.0)
    )


@pytest.mark.parametrize("mode", ["nearest", "left", "average"])
def test_exact_piecewise_constant_agrees_with_ode(mode):
    p = _pc_problem(jnp.float64, mode)
    assert p.exact
    ts = (jnp.linspace(0.0, 2.0, 9) + 0.01).at[-1].set(2.0)  # off the switching times
    a = nk.solve(p, saveat=ts)
    b = nk.solve(p, diffrax.Tsit5(), saveat=ts, rtol=1e-10, atol=1e-12)
    # ODE steps across the kernel switches limit agreement to about rtol.
    for f in ("train", "test", "train_dot", "test_dot"):
        assert _rel(getattr(a, f), getattr(b, f)) < 1e-7
    # float32: the exact path in single precision against the float64 one.
    c = nk.solve(_pc_problem(jnp.float32, mode), saveat=ts.astype(jnp.float32))
    assert c.train.dtype == jnp.float32
    # float32 eigendecompositions of kernels with condition ~1e3: ~1e-4 relative.
    assert _rel(c.train, a.train) < 1e-4 and _rel(c.test, a.test) < 1e-4


@functools.cache
def _linear_setup(T=2.0):
    data = _data(n=10, m=4, d=3)
    model = eqx.nn.Linear(3, "scalar", key=jax.random.key(2))
    ts = jnp.linspace(0.0, T, 21)
    sol = nk.solve(
        nk.GradientFlowProblem(model, data, tspan=(0.0, T)),
        saveat=ts,
        save_weights=True,
        rtol=1e-11,
        atol=1e-12,
    )
    return data, model, ts, sol


def test_linear_model_every_grid_is_exact():
    # A linear model's NTK is [X 1][X 1]ᵀ at every weight state: any grid is exact.
    data, model, ts, sol = _linear_setup()
    cases = (
        (S.Time(), ts[::10], S.PiecewiseConstant()),  # exact exponentials
        (S.Time(), ts[::5], S.Linear()),
        (S.LossLevel(), ts[::5], S.Smoothstep()),
    )
    x1 = jnp.concatenate([data.x_train, jnp.ones((10, 1))], 1)
    for sched, times, interp in cases:
        grid = nk.KernelGrid.from_solution(sol, times, model, data, schedule=sched)
        np.testing.assert_allclose(grid.kernel_train[-1], x1 @ x1.T, atol=1e-12)
        p = nk.ScheduledKernelProblem(grid, data, sched, interp, tspan=(0.0, 2.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", S.ScheduleRangeWarning)
            s = nk.solve(p, saveat=ts, rtol=1e-11, atol=1e-12)
        # Both the true flow and the ODE path are solved at rtol 1e-11.
        assert _rel(s.train, sol.train) < 1e-8
        assert _rel(s.test, sol.test) < 1e-8


def test_from_solution_matches_true_velocity_at_nodes():
    data = _data(n=6, m=3, d=2)
    model = eqx.nn.MLP(2, "scalar", 8, 1, activation=jax.nn.softplus, key=jax.random.key(0))
    ts = jnp.linspace(0.0, 1.0, 5)
    sol = nk.solve(
        nk.GradientFlowProblem(model, data, tspan=(0.0, 1.0)),
        saveat=ts,
        save_weights=True,
        rtol=1e-10,
        atol=1e-12,
    )
    grid = nk.KernelGrid.from_solution(sol, ts[jnp.array([0, 2, 4])], model, data)
    np.testing.assert_allclose(grid.times, ts[jnp.array([0, 2, 4])])
    for g, i in enumerate((0, 2, 4)):
        r = (sol.train[i] - sol.y_train).reshape(-1) / 6
        # The chain rule du/dt = -Θ ∇L holds to round-off at every node.
        np.testing.assert_allclose(
            -grid.kernel_train[g] @ r, sol.train_dot[i].ravel(), rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(
            -grid.kernel_test[g] @ r, sol.test_dot[i].ravel(), rtol=1e-9, atol=1e-12
        )
    # Loss-scheduled: nodes are log-losses, sorted increasingly (latest time first).
    gl = nk.KernelGrid.from_solution(
        sol, ts[jnp.array([0, 2, 4])], model, data, schedule=S.LossLevel()
    )
    np.testing.assert_allclose(gl.nodes, jnp.log(sol.train_loss[jnp.array([4, 2, 0])]))
    np.testing.assert_allclose(gl.kernel_train[0], grid.kernel_train[2])


def test_low_rank_full_rank_equals_dense_and_reports_error():
    data = _data()
    grid = _grid(data, G=3)
    full = grid.compress(8)
    p = lambda g: nk.ScheduledKernelProblem(g, data, tspan=(0.0, 2.0), u0_train=jnp.ones((8, 1)))
    a, b = nk.solve(p(grid), saveat=5, rtol=1e-10), nk.solve(p(full), saveat=5, rtol=1e-10)
    assert _rel(a.train, b.train) < 1e-8 and _rel(a.test, b.test) < 1e-8
    np.testing.assert_allclose(full.compression_error, 0.0, atol=1e-13)
    low = grid.compress(3)
    lam = jnp.linalg.eigvalsh(grid.kernel_train)
    expect = jnp.sqrt(jnp.sum(lam[:, :5] ** 2, 1) / jnp.sum(lam**2, 1))
    np.testing.assert_allclose(low.compression_error[:, 0], expect, rtol=1e-10)
    np.testing.assert_allclose(
        jnp.linalg.norm(low.dense_train() - grid.kernel_train, axis=(1, 2))
        / jnp.linalg.norm(grid.kernel_train, axis=(1, 2)),
        expect,
        rtol=1e-8,
    )
    # Low-rank grids use the same exact path (the part of r outside the basis stays put).
    q = nk.ScheduledKernelProblem(low, data, interpolation=S.PiecewiseConstant(), tspan=(0, 2.0))
    ts = jnp.array([0.0, 0.3, 1.2, 2.0])
    ode = nk.solve(q, diffrax.Tsit5(), saveat=ts, rtol=1e-10, atol=1e-12)
    exact = nk.solve(q, saveat=ts)
    assert _rel(exact.train, ode.train) < 1e-7 and _rel(exact.test, ode.test) < 1e-7


def test_dense_and_low_rank_grids_agree_at_full_rank():
    # Two storages of the same kernels: every product, spectrum, certificate and solve agrees.
    data = _data()
    grid = _grid(data, G=3)
    full = grid.compress(8)
    assert isinstance(full, nk.LowRankKernelGrid) and isinstance(full, nk.AbstractKernelGrid)
    assert (full.rank, full.dim, full.n_test_outputs) == (8, 8, 5)
    # Reconstructions from the eigenpairs: round-off of one eigh (condition ~1e3).
    assert _rel(full.dense_train(), grid.kernel_train) < 1e-12
    assert _rel(full.dense_test(), grid.kernel_test) < 1e-12
    assert _rel(full.eigenvalues(), grid.eigenvalues()) < 1e-12
    a, b = nk.certify(grid, 2.0), nk.certify(full, 2.0)
    for f in ("lambda_min", "lambda_max", "rate", "stiffness"):
        np.testing.assert_allclose(getattr(b, f), getattr(a, f), rtol=1e-12)
    # Exact paths: round-off (measured ≤ 2e-15). ODE path: the same field to round-off, but
    # the controller's step sizes move with it, so agreement is at the tolerance (measured 3e-9).
    cases = (
        (S.Time(), S.PiecewiseConstant(), 1e-13),  # exact, stored spectra
        (S.Time(), S.PiecewiseConstant("average", 2), 1e-13),  # exact, pieces re-diagonalised
        (S.ResidualNorm(), S.PiecewiseConstant(), 1e-13),  # exact, exit times
        (S.Time(), S.Linear(), 1e-8),  # ODE at rtol 1e-10
    )
    ts = jnp.linspace(0.0, 2.0, 9) + 0.013
    for sched, interp, tol in cases:
        p = lambda g: nk.ScheduledKernelProblem(
            g, data, sched, interp, tspan=(0.0, 2.1), u0_train=jnp.ones((8, 1))
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", S.ScheduleRangeWarning)
            x = nk.solve(p(grid), saveat=ts, rtol=1e-10, atol=1e-12)
            y = nk.solve(p(full), saveat=ts, rtol=1e-10, atol=1e-12)
        assert _rel(y.train, x.train) < tol and _rel(y.test, x.test) < tol, (sched, interp)
    # A grid without test kernels: both storages keep the test outputs where they start.
    bare = nk.KernelGrid(grid.nodes, grid.kernel_train)
    for g in (bare, bare.compress(8)):
        q = nk.ScheduledKernelProblem(g, data, interpolation=S.PiecewiseConstant(), tspan=(0, 2))
        sol = nk.solve(q, saveat=5)
        np.testing.assert_array_equal(sol.test, jnp.zeros_like(sol.test))
        with_test = nk.solve(eqx.tree_at(lambda r: r.grid, q, grid), saveat=5)
        assert _rel(sol.train, with_test.train) < 1e-14  # train outputs ignore test kernels


def test_compression_error_matches_direct_computation():
    data = _data()
    grid = _grid(data, G=3)
    low = grid.compress(3)
    kt, ks = np.asarray(grid.kernel_train), np.asarray(grid.kernel_test)
    for g in range(3):
        lam, vec = np.linalg.eigh(kt[g])
        v = vec[:, -3:]
        approx = v @ np.diag(lam[-3:]) @ v.T
        err_train = np.linalg.norm(kt[g] - approx) / np.linalg.norm(kt[g])
        err_test = np.linalg.norm(ks[g] - ks[g] @ v @ v.T) / np.linalg.norm(ks[g])
        # The stored errors come from the eigenvalues and the projected test kernel.
        np.testing.assert_allclose(low.compression_error[g], [err_train, err_test], rtol=1e-10)
    assert float(jnp.min(low.compression_error)) > 0.05  # a rank-3 cut of random 8×8 kernels
    np.testing.assert_allclose(grid.compress(8).compression_error, 0.0, atol=1e-13)
    with pytest.raises(ValueError, match="between 1 and n·k = 8"):
        grid.compress(9)


def test_capabilities_must_be_declared():
    class Forgot(S.AbstractSchedule):
        def __call__(self, t, u, y, loss):
            return t

    with pytest.raises(TypeError, match="depends_on_state"):
        Forgot()

    class NoInverse(S.AbstractNormSchedule):
        depends_on_state: ClassVar[bool] = True

        def __call__(self, t, u, y, loss):
            return jnp.sum((u - y) ** 2)

    with pytest.raises(TypeError, match="residual_sq"):
        NoInverse()

    class Unsure(S.AbstractInterpolation):
        support: ClassVar[int] = 2

        def local(self, s, nodes):
            return S.Linear().local(s, nodes)

    with pytest.raises(TypeError, match="convex"):
        Unsure()


def test_time_only_schedule_other_than_time_is_not_solved_as_time():
    # σ = 2t depends on time only, but its switching points are not times: the exact solver
    # (which reads bounds as times) must not take it. On nodes 2·s it equals Time on nodes s.
    class Doubled(S.AbstractSchedule):
        depends_on_state: ClassVar[bool] = False

        def __call__(self, t, u, y, loss):
            return 2 * jnp.asarray(t, u.dtype)

    data = _data()
    g = _grid(data, G=3, nodes=jnp.array([0.0, 0.8, 2.0]))
    kw = dict(interpolation=S.PiecewiseConstant(), tspan=(0.0, 2.0), u0_train=jnp.ones((8, 1)))
    p = nk.ScheduledKernelProblem(g.with_nodes(2 * g.nodes), data, Doubled(), **kw)
    q = nk.ScheduledKernelProblem(g, data, S.Time(), **kw)
    assert q.exact and not p.exact
    ts = (jnp.linspace(0.0, 2.0, 9) + 0.011).at[-1].set(2.0)  # off the switching times
    a = nk.solve(p, saveat=ts, rtol=1e-10, atol=1e-12)
    # ODE steps across the kernel switches limit agreement to about rtol.
    assert _rel(a.train, nk.solve(q, saveat=ts).train) < 1e-7


# ---------------------------------------------------------------- differentiability


@pytest.mark.parametrize(
    "schedule, interp, nodes",
    [
        (S.Time(), S.PiecewiseConstant(), (0.0, 1.0, 2.0)),  # exact, switching times
        pytest.param(S.Time(), S.Smoothstep(), (0.0, 1.0, 2.0), marks=pytest.mark.slow),  # ODE
        (S.LossLevel(), S.PiecewiseConstant("average", 2), (-3.0, -1.0, 0.0)),  # exit times
    ],
)
def test_gradient_wrt_nodes_matches_finite_differences(schedule, interp, nodes):
    data = _data(n=6, m=2)
    grid = _grid(data, G=3, nodes=jnp.array(nodes))
    ts = jnp.linspace(0.0, 3.0, 8)  # no saved time on a switching point (kinks there)

    def objective(nodes):
        g = eqx.tree_at(lambda x: x.nodes, grid, nodes)
        p = nk.ScheduledKernelProblem(
            g, data, schedule, interp, tspan=(0.0, 3.0), u0_train=jnp.ones((6, 1))
        )
        s = nk.solve(p, saveat=ts, rtol=1e-12, atol=1e-12)
        return jnp.sum(s.train**2) + jnp.sum(s.test**2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.ScheduleRangeWarning)
        grad = jax.grad(objective)(grid.nodes)
        # One directional derivative moving all nodes (two solves instead of six).
        d, e = jnp.array([1.0, -0.5, 0.25]), 1e-6
        fd = (objective(grid.nodes + e * d) - objective(grid.nodes - e * d)) / (2 * e)
    # Central differences with h = 1e-6 carry ~1e-8 relative error; ODE solves at 1e-12.
    np.testing.assert_allclose(grad @ d, fd, rtol=1e-4)
    assert float(jnp.abs(grad @ d)) > 1e-3  # a derivative worth checking


@pytest.mark.parametrize("schedule", [S.LossLevel(), S.ResidualNorm()])
def test_exact_state_schedule_agrees_with_ode(schedule):
    # Piecewise-constant in the loss level / residual norm: pieces are left when ‖u - Y‖
    # reaches a boundary level, at exit times found by bisection on the closed form.
    data = _data()
    g = _grid(data, G=4)
    nodes = [-1.2, -0.6, 0.0, 0.3] if isinstance(schedule, S.LossLevel) else [0.8, 1.0, 1.2, 1.5]
    grid = nk.KernelGrid(jnp.array(nodes), g.kernel_train, g.kernel_test)
    p = nk.ScheduledKernelProblem(
        grid,
        data,
        schedule,
        S.PiecewiseConstant("average", 2),
        tspan=(0.0, 3.2),
        u0_train=2 * jnp.ones((8, 1)),
    )
    assert p.exact
    ts = jnp.linspace(0.0, 3.0, 13) + 0.0137
    a = nk.solve(p, saveat=ts)
    b = nk.solve(p, diffrax.Tsit5(), saveat=ts, rtol=1e-12, atol=1e-12)
    # The run crosses every piece (log-loss 0.48 → -2.5), so every exit time is exercised.
    assert float(schedule(0.0, a.train[-1], a.y_train, a.loss)) < nodes[0]
    for f in ("train", "test", "train_dot", "test_dot"):
        # ODE steps across the switching surfaces at rtol 1e-12: agreement ~1e-10.
        assert _rel(getattr(a, f), getattr(b, f)) < 1e-8


# ---------------------------------------------------------------- certificate


def test_certificate_bounds_solved_residuals():
    data = _data()
    kt = _psd(jax.random.key(5), 4, 8, rank=3, shift=0.5)  # well-conditioned from below
    grid = nk.KernelGrid(jnp.array([-3.0, -2.0, -1.0, 0.0]), kt)
    cert = nk.certify(grid, learning_rate=2.0)
    lam = jnp.linalg.eigvalsh(kt)
    np.testing.assert_allclose(cert.lambda_min, lam[:, 0])
    np.testing.assert_allclose(cert.rate, 2.0 * lam[:, 0].min() / 8)
    assert float(cert.rate) > 0
    cases = (
        (S.LossLevel(), S.Linear()),
        (S.ResidualNorm(), S.Smoothstep()),
        (S.Time(), S.PiecewiseConstant()),
    )
    for sched, interp in cases:
        p = nk.ScheduledKernelProblem(
            grid,
            data,
            sched,
            interp,
            tspan=(0.0, 6.0),
            learning_rate=2.0,
            u0_train=3 * jnp.ones((8, 1)),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", S.ScheduleRangeWarning)
            sol = nk.solve(p, saveat=31, rtol=1e-10, atol=1e-12)
        r = jnp.linalg.norm((sol.train - sol.y_train).reshape(31, -1), axis=1)
        bound = cert.bound(sol.t, r[0])
        # The bound holds up to the solver's tolerance, and it is not vacuous here.
        assert bool(jnp.all(r <= bound * (1 + 1e-8)))
        assert float(r[-1]) < 0.9 * float(r[0])

    class Wild(S.AbstractInterpolation):
        # Declared non-convex (its weights are Linear's, but the certificate must not ask).
        support: ClassVar[int] = 2
        convex: ClassVar[bool] = False

        def local(self, s, nodes):
            return S.Linear().local(s, nodes)

    # A non-convex interpolation gets no certificate.
    assert np.isnan(float(nk.certify(grid, interpolation=Wild()).rate))


# ---------------------------------------------------------------- bad input


def test_bad_nodes():
    data = _data()
    kt = _psd(jax.random.key(0), 3, 8)
    with pytest.raises(ValueError, match="strictly increasing"):
        nk.KernelGrid(jnp.array([0.0, 2.0, 1.0]), kt)
    with pytest.raises(ValueError, match="repeated"):
        nk.KernelGrid(jnp.array([0.0, 1.0, 1.0]), kt)
    with pytest.raises(ValueError, match="non-finite"):
        nk.KernelGrid(jnp.array([0.0, 1.0, jnp.nan]), kt)
    with pytest.raises(ValueError, match="3 values"):
        nk.KernelGrid(jnp.array([0.0, 1.0, 2.0]), kt[:2])
    del data


def test_bad_kernels():
    kt = _psd(jax.random.key(0), 2, 8)
    nodes = jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match="non-finite.*node"):
        nk.KernelGrid(nodes, kt.at[1, 2, 3].set(jnp.inf))
    bad = kt.at[1].add(-2.0 * jnp.eye(8) * jnp.linalg.eigvalsh(kt[1])[-1])
    lam = float(jnp.linalg.eigvalsh(bad[1])[0])
    with pytest.raises(ValueError, match=f"node 1 has eigenvalue {lam:.6g}"):
        nk.KernelGrid(nodes, bad)
    nk.KernelGrid(nodes, bad, psd_tol=None)  # explicitly unchecked
    with pytest.raises(ValueError, match="not symmetric"):
        nk.KernelGrid(nodes, kt + jnp.triu(jnp.ones((8, 8)), 1))
    with pytest.raises(ValueError, match="kernel_test"):
        nk.KernelGrid(nodes, kt, jnp.ones((2, 5, 7)))


def test_grid_data_mismatch():
    grid = _grid(_data(n=8))
    with pytest.raises(ValueError, match="8 train examples"):
        nk.ScheduledKernelProblem(grid, _data(n=9), tspan=(0.0, 1.0))
    with pytest.raises(ValueError, match="test kernels"):
        nk.ScheduledKernelProblem(grid, _data(n=8, m=4), tspan=(0.0, 1.0))
    with pytest.raises(TypeError, match="schedule"):
        nk.ScheduledKernelProblem(grid, _data(n=8), schedule="time")


def test_schedule_outside_grid_is_clamped_with_one_warning():
    data = _data()
    grid = _grid(data, nodes=jnp.array([10.0, 11.0, 12.0]))  # t ∈ [0, 2] lies below the grid
    p = nk.ScheduledKernelProblem(grid, data, tspan=(0.0, 2.0), u0_train=jnp.ones((8, 1)))
    with pytest.warns(S.ScheduleRangeWarning, match="clamped"):
        sol = nk.solve(p, saveat=5, rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nk.solve(p, saveat=7)  # the same grid again: no second warning
    frozen = nk.KernelFlowProblem(
        grid.kernel_train[0],
        data,
        tspan=(0.0, 2.0),
        kernel_test=grid.kernel_test[0],
        u0_train=jnp.ones((8, 1)),
    )
    assert _rel(sol.train, nk.solve(frozen, saveat=5).train) < 1e-8


def test_from_solution_needs_weights_and_saved_times():
    data, model, ts, sol = _linear_setup()
    with pytest.raises(ValueError, match="not among the solution's saved times"):
        nk.KernelGrid.from_solution(sol, jnp.array([0.05]), model, data)
    nosave = nk.solve(nk.GradientFlowProblem(model, data, tspan=(0.0, 1.0)), saveat=3)
    with pytest.raises(ValueError, match="save_weights=True"):
        nk.KernelGrid.from_solution(nosave, jnp.array([0.0]), model, data)


# ---------------------------------------------------------------- transfer


def test_transfer_same_learning_rate_reproduces_and_loss_schedule_rescales():
    problem = nk.sine_problem(
        width=8, depth=1, n_train=6, n_test=3, dim=2, t_end=2.0, activation="softplus"
    )
    ts = jnp.linspace(0.0, 2.0, 5)
    kw = dict(rtol=1e-10, atol=1e-12)
    sol = nk.solve(problem, saveat=ts, save_weights=True, **kw)
    times = ts[jnp.array([0, 2, 4])]
    grid = nk.KernelGrid.from_solution(
        sol, times, problem.model, problem.data, schedule=S.LossLevel()
    )
    original = nk.ScheduledKernelProblem(grid, problem.data, S.LossLevel(), tspan=(0.0, 2.0))
    a = nk.solve(original, saveat=ts, **kw)
    same = nk.transfer.surrogate_for(grid, nk.remake(problem, learning_rate=1.0), S.LossLevel())
    b = nk.solve(same, saveat=ts, **kw)
    # (b) with the same learning rate is the original surrogate.
    np.testing.assert_allclose(b.train, a.train, rtol=0, atol=1e-14)
    np.testing.assert_allclose(b.test, a.test, rtol=0, atol=1e-14)
    # Half the learning rate: a state-scheduled surrogate is autonomous, so it runs the same
    # path at half speed, u_{η/2}(2t) = u_η(t) (to the ODE tolerance).
    half = nk.transfer.surrogate_for(
        grid, nk.remake(problem, learning_rate=0.5, tspan=(0.0, 4.0)), S.LossLevel()
    )
    c = nk.solve(half, saveat=2 * ts, **kw)
    assert _rel(c.train, a.train) < 1e-8 and _rel(c.test, a.test) < 1e-8


@pytest.mark.slow
def test_compare_study_scheduled_rows(tmp_path):
    cmp = nk.compare_study(
        quick=True, grid_sizes=(2,), out=str(tmp_path), progress=False, log=lambda s: None
    )
    import json

    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    for name in ("scheduled_time_G2", "scheduled_loss_G2", "scheduled_time_exact_G2"):
        for key in (
            "max_rel_train_error",
            "max_rel_test_error",
            "final_train_loss",
            "final_test_loss",
            "seconds",
            "steps",
            "grid_seconds",
            "speedup",
            "truth_uncertainty",
        ):
            assert key in rows[name], (name, key)
        assert rows[name]["certificate_holds"]
    assert rows["scheduled_time_exact_G2"]["steps"] == 0
    assert (tmp_path / "error_vs_G.png").exists()
    # Two kernels on the true path beat the frozen initial kernel.
    assert (
        cmp.rows["scheduled_time_G2"]["max_rel_train_error"]
        < cmp.rows["frozen"]["max_rel_train_error"]
    )
