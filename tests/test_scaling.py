"""Fast paths for large training sets: Krylov piece bases, low-rank piece combinations,
output-shared kernels, Lanczos compression and grids from linearised steps.

Every fast path is checked against the exact dense path in float64 (agreement), and the
approximate ones against their own error estimates.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import psd_kernels, rel_max, small_data, small_sine

import ntkode as nk
from ntkode import schedules as S
from ntkode._core._model import partition


def _random_grid(data, G=4, key=3, k=1, top=1.5):
    """Random PSD kernels with a spread-out spectrum (`10^top` down to 0.01), like an NTK's."""
    n, m = data.n_train * k, data.n_test * k
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    scale = jnp.logspace(top, -2, n)
    q = jnp.linalg.qr(jax.random.normal(k1, (G, n, n)))[0]
    kt = jnp.einsum("gir,r,gjr->gij", q, scale, q) + psd_kernels(k3, G, n, rank=2)
    ks = jax.random.normal(k2, (G, m, n))
    return nk.KernelGrid(jnp.linspace(0.0, 3.0, G), kt, ks, n_outputs=k)


def _problem(grid, data, schedule=S.Time(), mode="average", basis=nk.EigenBasis(), u0=None):
    return nk.ScheduledKernelProblem(
        grid,
        data,
        schedule,
        S.PiecewiseConstant(mode, substeps=2),
        tspan=(0.0, 3.0),
        u0_train=jnp.ones((data.n_train, data.n_outputs)) if u0 is None else u0,
        piece_basis=basis,
    )


# ---------------------------------------------------------------- Krylov piece bases


@pytest.mark.parametrize("schedule", [S.Time(), S.LossLevel()])
def test_krylov_basis_of_full_dimension_is_exact(schedule):
    # dim ≥ n·k: the Krylov space is the whole space (Lanczos breaks down at the invariant
    # subspace), so the closed forms are those of the eigenbasis up to round-off.
    data = small_data(n=12, m=5)
    grid = _random_grid(data)
    ts = jnp.linspace(0.0, 3.0, 17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.ScheduleRangeWarning)
        a = nk.solve(_problem(grid, data, schedule), saveat=ts)
        b = nk.solve(_problem(grid, data, schedule, basis=nk.KrylovBasis(dim=40)), saveat=ts)
    assert a.success and b.success
    for f in ("train", "test", "train_dot", "test_dot"):
        # Round-off of 12 reorthogonalised Lanczos steps on kernels of condition ~1e4.
        assert rel_max(getattr(b, f), getattr(a, f)) < 1e-9, f


@pytest.mark.slow
def test_krylov_basis_error_estimate_tracks_the_error():
    # n = 60, a stiff spectrum (c·λ_max·τ ≈ 100 per piece) and dim = 8..30: a budget too
    # small for the tolerance must say so in the result, and one large enough must not.
    data = small_data(n=60, m=7, key=2)
    grid = _random_grid(data, G=3, key=5, top=4.0)
    ts = jnp.linspace(0.0, 3.0, 31)
    exact = nk.solve(_problem(grid, data), saveat=ts)
    scale = float(jnp.linalg.norm(exact.train[0] - exact.y_train))
    errors = []
    for dim in (8, 20, 30):
        sol = nk.solve(_problem(grid, data, basis=nk.KrylovBasis(dim=dim, rtol=1e-8)), saveat=ts)
        err = float(jnp.max(jnp.linalg.norm((sol.train - exact.train)[:, :, 0], axis=1)))
        errors.append(err / scale)
        if err / scale > 1e-6:
            assert sol.result == nk.RESULTS.not_converged, dim
            assert "budget" in sol.message
    # The error falls as the Krylov space grows (superlinear convergence for exp).
    assert errors[0] > 10 * errors[1] > 100 * errors[2]
    sol = nk.solve(_problem(grid, data, basis=nk.KrylovBasis(dim=30, rtol=1e-6)), saveat=ts)
    assert sol.success and errors[2] < 1e-6


def test_krylov_basis_on_low_rank_and_shared_grids():
    data = small_data(n=10, m=4)
    dense = _random_grid(data)
    low = dense.compress(6)
    ts = jnp.linspace(0.0, 3.0, 9)
    a = nk.solve(_problem(low, data), saveat=ts)
    b = nk.solve(_problem(low, data, basis=nk.KrylovBasis(dim=20)), saveat=ts)
    assert rel_max(b.train, a.train) < 1e-9 and rel_max(b.test, a.test) < 1e-9


def test_bad_piece_basis():
    data = small_data()
    with pytest.raises(TypeError, match="piece_basis"):
        _problem(_random_grid(data), data, basis="lanczos")
    with pytest.raises(ValueError, match="dim"):
        nk.KrylovBasis(dim=0)
    with pytest.raises(ValueError, match="rtol"):
        nk.KrylovBasis(rtol=-1.0)


# ---------------------------------------------------------------- low-rank pieces


@pytest.mark.parametrize("schedule", [S.Time(), S.LossLevel()])
def test_low_rank_average_pieces_equal_dense_pieces_of_the_same_kernels(schedule):
    # Combinations of two rank-r kernels are diagonalised in the span of their bases: the
    # result must equal the dense path on the low-rank grid's own (dense) kernels.
    data = small_data(n=14, m=6)
    low = _random_grid(data).compress(5)
    dense = nk.KernelGrid(low.nodes, low.dense_train(), low.dense_test(), psd_tol=None)
    ts = jnp.linspace(0.0, 3.0, 13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S.ScheduleRangeWarning)
        a = nk.solve(_problem(dense, data, schedule), saveat=ts)
        b = nk.solve(_problem(low, data, schedule), saveat=ts)
    for f in ("train", "test", "train_dot", "test_dot"):
        assert rel_max(getattr(b, f), getattr(a, f)) < 1e-10, f


def test_low_rank_pieces_of_nodes_sharing_eigenvectors_equal_dense_pieces():
    # Nodes whose bases span the same space (here: one kernel, rescaled) make the stacked
    # basis rank-deficient: the dependent directions must drop out, not blow up.
    data = small_data(n=14, m=6)
    low = _random_grid(data).compress(5)
    vec = jnp.broadcast_to(low.eigvecs[:1], low.eigvecs.shape)
    lam = low.eigvals[:1] * jnp.linspace(1.0, 2.0, low.size)[:, None]
    basis = jnp.broadcast_to(low.test_basis[:1], low.test_basis.shape)
    low = nk.LowRankKernelGrid(low.nodes, lam, vec, basis)
    dense = nk.KernelGrid(low.nodes, low.dense_train(), low.dense_test(), psd_tol=None)
    ts = jnp.linspace(0.0, 3.0, 13)
    for schedule in (S.Time(), S.LossLevel()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", S.ScheduleRangeWarning)
            a = nk.solve(_problem(dense, data, schedule), saveat=ts)
            b = nk.solve(_problem(low, data, schedule), saveat=ts)
        for f in ("train", "test", "train_dot", "test_dot"):
            assert rel_max(getattr(b, f), getattr(a, f)) < 1e-10, f


def test_low_rank_pieces_of_indefinite_combinations_equal_dense_pieces():
    # A negative w_j Λ_j (extrapolating weights, or a kernel that is not PSD) has no square
    # root: the piece is diagonalised in an orthonormal basis of the stacked node bases.
    data = small_data(n=14, m=6)
    low = _random_grid(data).compress(5)
    idx, w = jnp.array([1, 2]), jnp.array([1.5, -0.5])
    lam, vec, test = low.piece_spectral(idx, w)
    train = jnp.einsum("a,aij->ij", w, low.dense_train()[idx])
    assert rel_max(jnp.einsum("ir,r,jr->ij", vec, lam, vec), train) < 1e-10
    assert rel_max(test, jnp.einsum("a,aij,jr->ir", w, low.dense_test()[idx], vec)) < 1e-10
    # Kernels with a negative eigenvalue, through the solver: the same as the dense path.
    low = eqx.tree_at(lambda g: g.eigvals, low, low.eigvals.at[:, 0].set(-0.05))
    dense = nk.KernelGrid(low.nodes, low.dense_train(), low.dense_test(), psd_tol=None)
    ts = jnp.linspace(0.0, 3.0, 13)
    a = nk.solve(_problem(dense, data), saveat=ts)
    b = nk.solve(_problem(low, data), saveat=ts)
    for f in ("train", "test", "train_dot", "test_dot"):
        assert rel_max(getattr(b, f), getattr(a, f)) < 1e-10, f


# ---------------------------------------------------------------- shared (traced) kernels


def _shared_pair(k=3):
    data = small_data(n=9, m=4)
    y = jnp.stack([jnp.sin(data.x_train.sum(1) + j) for j in range(k)], 1)
    ys = jnp.stack([jnp.sin(data.x_test.sum(1) + j) for j in range(k)], 1)
    data = nk.Dataset(data.x_train, y, data.x_test, ys)
    base = _random_grid(small_data(n=9, m=4), G=3)
    shared = nk.SharedKernelGrid(base.nodes, base.kernel_train, base.kernel_test, n_outputs=k)
    kron = lambda a: jnp.einsum("gij,cd->gicjd", a, jnp.eye(k)).reshape(
        a.shape[0], a.shape[1] * k, a.shape[2] * k
    )
    full = nk.KernelGrid(base.nodes, kron(base.kernel_train), kron(base.kernel_test), n_outputs=k)
    return data, shared, full


@pytest.mark.slow
def test_shared_grid_equals_kronecker_dense_grid():
    data, shared, full = _shared_pair()
    ts = jnp.linspace(0.0, 3.0, 11)
    u0 = jnp.cos(jnp.arange(27.0)).reshape(9, 3)
    np.testing.assert_allclose(shared.dense_train(), full.kernel_train)
    np.testing.assert_allclose(
        jnp.sort(shared.eigenvalues(), 1), jnp.sort(full.eigenvalues(), 1), rtol=1e-10, atol=1e-10
    )
    for interp in (S.PiecewiseConstant("average", 2), S.Linear()):
        sols = []
        for grid in (shared, full):
            p = nk.ScheduledKernelProblem(
                grid, data, S.Time(), interp, tspan=(0.0, 3.0), u0_train=u0
            )
            sols.append(nk.solve(p, saveat=ts, rtol=1e-10, atol=1e-12))
        # Exact path (n-row bases on an (n, k) residual): round-off; ODE path: same steps.
        for f in ("train", "test", "train_dot"):
            assert rel_max(getattr(sols[0], f), getattr(sols[1], f)) < 1e-9, (interp, f)
    p = nk.ScheduledKernelProblem(
        shared, data, S.Time(), S.PiecewiseConstant(), tspan=(0.0, 3.0), u0_train=u0,
        piece_basis=nk.KrylovBasis(dim=27),
    )  # fmt: skip
    q = nk.ScheduledKernelProblem(
        full, data, S.Time(), S.PiecewiseConstant(), tspan=(0.0, 3.0), u0_train=u0
    )
    assert rel_max(nk.solve(p, saveat=ts).train, nk.solve(q, saveat=ts).train) < 1e-9


def test_shared_grid_compresses_to_the_kronecker_low_rank_grid():
    data, shared, full = _shared_pair()
    k = shared.n_outputs
    want = full.compress(4 * k)  # the shared spectrum, each eigenvalue k times
    got = shared.compress(4)
    assert isinstance(got, nk.LowRankKernelGrid) and got.rank == 4 * k and got.n_outputs == k
    assert rel_max(got.dense_train(), want.dense_train()) < 1e-10
    assert rel_max(got.dense_test(), want.dense_test()) < 1e-10
    np.testing.assert_allclose(got.eigvals, want.eigvals, rtol=1e-10)
    np.testing.assert_allclose(got.compression_error, want.compression_error, rtol=1e-8)
    assert float(got.compression_error.min()) > 1e-6  # rank 4 of 9: a real truncation
    # At full rank it is the shared grid itself, and solves with cross-entropy agree.
    exact = shared.compress(9, krylov_dim=9)
    assert rel_max(exact.dense_train(), shared.dense_train()) < 1e-9
    ts = jnp.linspace(0.0, 3.0, 7)
    labels = jnp.argmax(data.y_train, 1)
    ce = nk.Dataset(data.x_train, labels, data.x_test, jnp.argmax(data.y_test, 1))
    sols = [
        nk.solve(
            nk.ScheduledKernelProblem(
                g, ce, S.Time(), S.Linear(), nk.losses.cross_entropy, tspan=(0.0, 3.0),
                u0_train=jnp.zeros((9, k)), u0_test=jnp.zeros((4, k)),
            ),
            saveat=ts, rtol=1e-10, atol=1e-12,
        )
        for g in (shared, exact)
    ]  # fmt: skip
    assert rel_max(sols[1].train, sols[0].train) < 1e-7
    assert rel_max(sols[1].test, sols[0].test) < 1e-7


def test_traced_grid_from_params_is_the_mean_diagonal_block():
    model, data = small_sine(n_train=7, n_test=3, out=3)
    y = jnp.tile(data.y_train, (1, 3))
    data = nk.Dataset(data.x_train, y, data.x_test, jnp.tile(data.y_test, (1, 3)))
    grid = nk.KernelGrid.from_params([model], model, data, jnp.zeros(1), trace=True)
    assert isinstance(grid, nk.SharedKernelGrid) and grid.dim == 21 and grid.n_test_outputs == 9
    full = nk.ntk(model, data.x_train)
    np.testing.assert_allclose(
        grid.kernel_train[0], jnp.einsum("ijaa->ij", full) / 3, rtol=1e-12, atol=1e-12
    )
    full_test = nk.ntk(model, data.x_test, data.x_train)
    np.testing.assert_allclose(
        grid.kernel_test[0], jnp.einsum("ijaa->ij", full_test) / 3, rtol=1e-12, atol=1e-12
    )
    # With `rank`, each shared kernel is compressed as built: the shared grid's compress.
    low = nk.KernelGrid.from_params([model], model, data, jnp.zeros(1), trace=True, rank=2)
    assert isinstance(low, nk.LowRankKernelGrid) and low.rank == 2 * 3
    assert rel_max(low.dense_train(), grid.compress(2).dense_train()) < 1e-10


def test_bad_shared_grid():
    with pytest.raises(ValueError, match=r"\(G, n, n\)"):
        nk.SharedKernelGrid(jnp.zeros(1), jnp.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="one kernel per node"):
        nk.SharedKernelGrid(jnp.arange(2.0), jnp.eye(3)[None])
    with pytest.raises(ValueError, match="n_outputs"):
        nk.SharedKernelGrid(jnp.zeros(1), jnp.eye(3)[None], n_outputs=0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        nk.SharedKernelGrid(jnp.zeros(1), -jnp.eye(3)[None])


# ---------------------------------------------------------------- Lanczos compression


def test_lanczos_compression_agrees_with_eigh_and_reports_its_error():
    data = small_data(n=40, m=6)
    grid = _random_grid(data, G=2, key=7, top=3.0)
    exact = grid.compress(6)
    full = grid.compress(6, krylov_dim=40)  # the whole space: exact Ritz pairs
    np.testing.assert_allclose(full.eigvals, exact.eigvals, rtol=1e-9)
    np.testing.assert_allclose(full.dense_train(), exact.dense_train(), atol=1e-8)
    np.testing.assert_allclose(full.compression_error, exact.compression_error, atol=1e-9)
    short = grid.compress(6, krylov_dim=14)
    # Ritz pairs from 14 steps: the reported error is the true one, and near the optimum.
    direct = jnp.linalg.norm(grid.kernel_train - short.dense_train(), axis=(1, 2))
    direct = direct / jnp.linalg.norm(grid.kernel_train, axis=(1, 2))
    np.testing.assert_allclose(short.compression_error[:, 0], direct, rtol=1e-8)
    assert bool(jnp.all(short.compression_error[:, 0] >= exact.compression_error[:, 0] - 1e-12))
    assert bool(jnp.all(short.compression_error[:, 0] <= 1.05 * exact.compression_error[:, 0]))
    with pytest.raises(ValueError, match="krylov_dim"):
        grid.compress(6, krylov_dim=3)


def test_randomized_compression_agrees_with_eigh_and_reports_its_error():
    data = small_data(n=40, m=6)
    grid = _random_grid(data, G=2, key=7, top=3.0)
    exact = grid.compress(6)
    # A sketch of the whole space: the range is exact, so are the Rayleigh–Ritz pairs.
    full = grid.compress(6, sketch=40, power_iterations=0)
    np.testing.assert_allclose(full.eigvals, exact.eigvals, rtol=1e-9)
    np.testing.assert_allclose(full.dense_train(), exact.dense_train(), atol=1e-8)
    np.testing.assert_allclose(full.compression_error, exact.compression_error, atol=1e-9)
    errors = []
    for power in (0, 2):
        short = grid.compress(6, sketch=10, power_iterations=power)
        direct = jnp.linalg.norm(grid.kernel_train - short.dense_train(), axis=(1, 2))
        direct = direct / jnp.linalg.norm(grid.kernel_train, axis=(1, 2))
        # The reported error is the true one, never below the optimum.
        np.testing.assert_allclose(short.compression_error[:, 0], direct, rtol=1e-8)
        assert bool(jnp.all(direct >= exact.compression_error[:, 0] - 1e-12))
        errors.append(direct)
    # Power iterations sharpen the range towards the top eigenvectors.
    assert bool(jnp.all(errors[1] < errors[0]))
    assert bool(jnp.all(errors[1] <= 1.05 * exact.compression_error[:, 0]))
    with pytest.raises(ValueError, match="sketch"):
        grid.compress(6, sketch=3)
    with pytest.raises(ValueError, match="not both"):
        grid.compress(6, sketch=10, krylov_dim=10)


# ---------------------------------------------------------------- Nyström grids


@pytest.mark.parametrize("outputs", [1, 3])
def test_nystrom_grid_is_exact_with_every_landmark_and_estimates_its_error(outputs):
    model, data = small_sine(n_train=12, n_test=6, width=24, out=outputs)
    if outputs > 1:  # the estimate's sampled rows are read off columns: each output's block
        tile = lambda y: jnp.tile(y.reshape(y.shape[0], -1), (1, outputs))
        data = nk.Dataset(data.x_train, tile(data.y_train), data.x_test, tile(data.y_test))
    params = partition(model)[0]
    nodes = jnp.zeros(1)
    dense = nk.KernelGrid.from_params([params], model, data, nodes)
    full = nk.KernelGrid.from_params([params], model, data, nodes, landmarks=12)
    assert isinstance(full, nk.LowRankKernelGrid) and full.rank == 12 * outputs
    # All landmarks: C W⁺ Cᵀ = Θ for a full-rank kernel (P ≫ n), and so for the test kernel.
    assert rel_max(full.dense_train(), dense.kernel_train) < 1e-8
    assert rel_max(full.dense_test(), dense.kernel_test) < 1e-8
    half = nk.KernelGrid.from_params([params], model, data, nodes, landmarks=5)
    # Fewer rows than the 64 sampled: the estimate is over every row, i.e. exact.
    direct = jnp.linalg.norm(half.dense_train()[0] - dense.kernel_train[0])
    direct = direct / jnp.linalg.norm(dense.kernel_train[0])
    direct_test = jnp.linalg.norm(half.dense_test()[0] - dense.kernel_test[0])
    direct_test = direct_test / jnp.linalg.norm(dense.kernel_test[0])
    np.testing.assert_allclose(half.compression_error[0], [direct, direct_test], rtol=1e-8)
    assert 1e-6 < float(direct) < 1.0
    with pytest.raises(ValueError, match="landmarks"):
        nk.KernelGrid.from_params([params], model, data, nodes, landmarks=13)
    with pytest.raises(ValueError, match="does not combine"):
        nk.KernelGrid.from_params([params], model, data, nodes, landmarks=5, rank=3)


def test_linearised_steps_with_every_landmark_equal_dense_steps():
    model, data = small_sine(n_train=10, n_test=4, width=24)
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 2.0))
    ts = jnp.linspace(0.0, 2.0, 3)
    dense = nk.KernelGrid.from_linearised_steps(problem, ts)
    low = nk.KernelGrid.from_linearised_steps(problem, ts, landmarks=10)
    assert isinstance(low, nk.LowRankKernelGrid)
    assert rel_max(low.dense_train(), dense.kernel_train) < 1e-7
    assert rel_max(low.dense_test(), dense.kernel_test) < 1e-7
    with pytest.raises(ValueError, match="does not combine"):
        nk.KernelGrid.from_linearised_steps(problem, ts, landmarks=5, rank=3)


# ---------------------------------------------------------------- grids from linearised steps


def test_linearised_steps_are_exact_for_a_linear_model():
    # A linear model is its own linearisation: the steps land on the true flow exactly, so
    # loss-level nodes equal those of a grid built on an accurate true-flow solution.
    data = small_data(n=10, m=4, d=3)
    model = eqx.nn.Linear(3, "scalar", key=jax.random.key(2))
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 2.0))
    ts = jnp.linspace(0.0, 2.0, 5)
    ref = nk.solve(problem, saveat=ts, save_weights=True, rtol=1e-11, atol=1e-12)
    a = nk.KernelGrid.from_solution(ref, ts, model, data, schedule=S.LossLevel())
    for basis in (nk.EigenBasis(), nk.KrylovBasis(dim=20)):
        b = nk.KernelGrid.from_linearised_steps(
            problem, ts, schedule=S.LossLevel(), piece_basis=basis
        )
        np.testing.assert_allclose(b.nodes, a.nodes, rtol=1e-11)
        np.testing.assert_allclose(b.times, a.times)
        np.testing.assert_allclose(b.u0_train, ref.train[0])


def test_linearised_steps_converge_at_first_order():
    # Gauss–Newton exponential Euler: the kernels at the nodes approach those of the true
    # flow like h (the curvature term Σ r_i ∇²f_i is what the linearisation leaves out).
    model, data = small_sine(n_train=16, n_test=8, width=16)
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 3.0))
    ts = jnp.linspace(0.0, 3.0, 4)
    ref = nk.solve(problem, saveat=ts, save_weights=True, rtol=1e-10, atol=1e-12)
    truth = nk.KernelGrid.from_solution(ref, ts, model, data)
    errors = []
    for substeps in (2, 4, 8):
        g = nk.KernelGrid.from_linearised_steps(problem, ts, substeps=substeps)
        errors.append(rel_max(g.kernel_train, truth.kernel_train))
    ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), (errors, ratios)


def test_bad_linearised_steps():
    model, data = small_sine()
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 1.0))
    with pytest.raises(ValueError, match="inside tspan"):
        nk.KernelGrid.from_linearised_steps(problem, [0.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        nk.KernelGrid.from_linearised_steps(problem, [0.5, 0.5])
    with pytest.raises(ValueError, match="substeps"):
        nk.KernelGrid.from_linearised_steps(problem, [0.0, 1.0], substeps=0)
    with pytest.raises(TypeError, match="GradientFlowProblem"):
        nk.KernelGrid.from_linearised_steps(data, [0.0, 1.0])


def test_low_rank_grid_refuses_non_finite_factors():
    low = _random_grid(small_data(n=14, m=6)).compress(5)
    for name in ("eigvals", "eigvecs", "test_basis"):
        bad = getattr(low, name).at[1, 0].set(jnp.nan)
        parts = {k: getattr(low, k) for k in ("eigvals", "eigvecs", "test_basis")} | {name: bad}
        match = rf"`{name}` has non-finite entries .* node\(s\) \[1\]"
        with pytest.raises(ValueError, match=match):
            nk.LowRankKernelGrid(low.nodes, **parts)


@pytest.mark.parametrize("options", [None, dict(sketch=9, power_iterations=1), dict(krylov_dim=9)])
def test_rank_compresses_each_node_as_built_and_equals_compressing_the_dense_grid(options):
    """`from_params(rank=r, compress=...)` holds one dense kernel at a time; its grid equals
    the dense grid's `compress(r, ...)` (the same per-node algorithm, seeded)."""
    model, data = small_sine(n_train=12, n_test=6, width=24, out=2)
    tile = lambda y: jnp.tile(y.reshape(y.shape[0], -1), (1, 2))
    data = nk.Dataset(data.x_train, tile(data.y_train), data.x_test, tile(data.y_test))
    params, _ = partition(model)
    moved = jax.tree.map(lambda a: 1.3 * a, params)  # a second, different state
    nodes = jnp.asarray([0.0, 1.0])
    dense = nk.KernelGrid.from_params([params, moved], model, data, nodes, times=nodes)
    want = dense.compress(6, **(options or {}))
    got = nk.KernelGrid.from_params(
        [params, moved], model, data, nodes, times=nodes, rank=6, compress=options
    )
    assert isinstance(got, nk.LowRankKernelGrid) and got.rank == 6
    np.testing.assert_allclose(got.eigvals, want.eigvals, rtol=1e-10, atol=1e-12)
    assert rel_max(got.dense_train(), want.dense_train()) < 1e-10
    assert rel_max(got.dense_test(), want.dense_test()) < 1e-10
    np.testing.assert_allclose(got.compression_error, want.compression_error, rtol=1e-8)
    np.testing.assert_allclose(got.times, nodes)
    # Truncation really happened (rank 6 of 24): the error is the dropped spectrum's.
    assert float(jnp.min(got.compression_error[:, 0])) > 1e-6
    with pytest.raises(ValueError, match="`compress`.*only applies with `rank`"):
        nk.KernelGrid.from_params([params], model, data, jnp.zeros(1), compress=dict(sketch=9))
    with pytest.raises(TypeError, match="`compress` must be a dict"):
        nk.KernelGrid.from_params([params], model, data, jnp.zeros(1), rank=2, compress="sketch")
