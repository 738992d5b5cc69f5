"""Kernel predictors (infinite time with lineax, finite-time MSE) and analytic-kernel problems."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkode as nk

pytestmark = pytest.mark.strict_dtypes


@pytest.fixture(scope="module")
def setup():
    data = nk.datasets.sine(32, 16, 4, key=jax.random.key(3))
    spec = nk.InfiniteMLP(2, "relu")
    k = spec.ntk(data.x_train)
    ks = spec.ntk(data.x_test, data.x_train)
    return data, spec, k, ks


def test_infinite_time_interpolates_and_matches_direct_solve(setup):
    data, _, k, ks = setup
    out = nk.kernel_regression(k, ks, data.y_train)
    # Ridge-less kernel regression interpolates the training targets (Θ Θ⁻¹ Y = Y); the
    # ReLU NTK of distinct inputs is positive definite (condition number ~1e3 here).
    np.testing.assert_allclose(out.train, data.y_train, atol=1e-9)
    direct = np.asarray(ks) @ np.linalg.solve(np.asarray(k), np.asarray(data.y_train))
    np.testing.assert_allclose(out.test, direct, rtol=1e-9, atol=1e-11)


def test_ridge_and_initial_outputs(setup):
    data, _, k, ks = setup
    lam = 0.3
    u0 = 0.1 * jax.random.normal(jax.random.key(0), data.y_train.shape)
    us0 = 0.1 * jax.random.normal(jax.random.key(1), data.y_test.shape)
    out = nk.kernel_regression(k, ks, data.y_train, ridge=lam, u0_train=u0, u0_test=us0)
    a = np.linalg.solve(np.asarray(k) + lam * np.eye(32), np.asarray(data.y_train - u0))
    np.testing.assert_allclose(out.test, us0 + np.asarray(ks) @ a, rtol=1e-10, atol=1e-12)


def test_finite_time_limits(setup):
    data, _, k, ks = setup
    u0 = jnp.full(data.y_train.shape, 0.5)
    us0 = jnp.full(data.y_test.shape, -0.5)
    kw = dict(u0_train=u0, u0_test=us0, learning_rate=2.0)
    at0 = nk.kernel_regression(k, ks, data.y_train, 0.0, **kw)
    np.testing.assert_allclose(at0.train, u0, atol=1e-12)
    np.testing.assert_allclose(at0.test, us0, atol=1e-12)
    late = nk.kernel_regression(k, ks, data.y_train, 1e9, **kw)
    inf = nk.kernel_regression(k, ks, data.y_train, u0_train=u0, u0_test=us0)
    np.testing.assert_allclose(late.test, inf.test, rtol=1e-7, atol=1e-9)
    # The train residual decays exactly as exp(-η Θ t / n) (eigendecomposition, independent).
    t = 3.0
    mid = nk.kernel_regression(k, ks, data.y_train, jnp.array([t]), **kw)
    lam, v = np.linalg.eigh(np.asarray(k))
    decay = v @ np.diag(np.exp(-2.0 * lam * t / 32)) @ v.T
    np.testing.assert_allclose(
        mid.train[0], data.y_train + decay @ np.asarray(u0 - data.y_train), atol=1e-10
    )


def test_infinite_width_problem_plugs_into_solve(setup):
    data, spec, k, ks = setup
    prob = nk.infinite_width_problem(spec, data, tspan=(0.0, 10.0), learning_rate=1.5)
    assert isinstance(prob, nk.KernelFlowProblem)
    ts = jnp.linspace(0.0, 10.0, 5)
    exact = nk.solve(prob, saveat=ts)  # MSE: closed form
    ref = nk.kernel_regression(k, ks, data.y_train, ts, learning_rate=1.5)
    np.testing.assert_allclose(exact.test, ref.test, atol=1e-12)
    ode = nk.solve(prob, diffrax.Tsit5(), saveat=ts, rtol=1e-7, atol=1e-9)
    # An adaptive ODE solve of the same linear flow agrees to (a few times) its tolerance.
    np.testing.assert_allclose(ode.test, exact.test, atol=1e-5)
    # Any callable kernel works too, e.g. the NNGP.
    nngp = nk.infinite_width_problem(lambda a, b: spec.nngp(a, b), data, tspan=(0.0, 1.0))
    np.testing.assert_allclose(nngp.kernel_train, spec.nngp(data.x_train), atol=1e-14)


def test_float32(setup):
    data, spec, _, _ = setup
    d32 = data.astype(jnp.float32)
    k = spec.ntk(d32.x_train)
    ks = spec.ntk(d32.x_test, d32.x_train)
    out = nk.kernel_regression(k, ks, d32.y_train, ridge=1e-3)
    assert out.test.dtype == jnp.float32
    ref = nk.kernel_regression(
        *(np.asarray(a, np.float64) for a in (k, ks, d32.y_train)), ridge=1e-3
    )
    # float32 Cholesky: error ~ cond · 1.2e-7 with cond ~1e3.
    np.testing.assert_allclose(out.test, ref.test, atol=2e-3)


def test_bad_input(setup):
    data, _, k, ks = setup
    with pytest.raises(ValueError, match="`ridge` must be non-negative"):
        nk.kernel_regression(k, ks, data.y_train, ridge=-1.0)
    x = jnp.concatenate([data.x_train[:5], data.x_train[:5]])  # repeated inputs: singular
    kk = nk.InfiniteMLP(1, "relu", b_std=None, out_b_std=None).ntk(x)
    with pytest.raises(ValueError, match="Pass `ridge` > 0"):
        nk.kernel_regression(kk, kk, jnp.ones((10, 1)))
    with pytest.raises(ValueError, match="`kernel_test`"):
        nk.kernel_regression(k, ks[:, :5], data.y_train)
    with pytest.raises(ValueError, match="`t` must be finite and non-negative"):
        nk.kernel_regression(k, ks, data.y_train, -1.0)
    with pytest.raises(TypeError, match="ntkode.Dataset"):
        nk.infinite_width_problem(nk.InfiniteMLP(1), (data.x_train, data.y_train))


def test_kernel_regression_shared_equals_kron():
    key = jax.random.split(jax.random.key(6), 3)
    a = jax.random.normal(key[0], (5, 5))
    kt = a @ a.T + jnp.eye(5)
    ks = jax.random.normal(key[1], (3, 5))
    y = jax.random.normal(key[2], (5, 2))
    shared = nk.kernel_regression(kt, ks, y, ridge=0.0)
    full = nk.kernel_regression(jnp.kron(kt, jnp.eye(2)), jnp.kron(ks, jnp.eye(2)), y, ridge=0.0)
    np.testing.assert_allclose(shared.test, full.test, atol=1e-12)
    np.testing.assert_allclose(shared.train, full.train, atol=1e-12)
    np.testing.assert_allclose(nk.kernel_regression(kt, kt, y, ridge=0.0).test, y, atol=1e-10)


# -- bad input ------------------------------------------------------------------------------


def test_finite_and_infinite_time_are_one_formula_with_ridge():
    key = jax.random.split(jax.random.key(7), 4)
    a = jax.random.normal(key[0], (6, 6))
    kt = a @ a.T
    ks = jax.random.normal(key[1], (4, 6))
    y = jax.random.normal(key[2], (6, 2))
    u0 = jax.random.normal(key[3], (6, 2))
    kw = dict(ridge=0.3, u0_train=u0, u0_test=jnp.zeros((4, 2)))
    inf = nk.kernel_regression(kt, ks, y, **kw)
    # t → ∞ of the finite-time formula is the ridge solve (to round-off of e^{-cλt}).
    late = nk.kernel_regression(kt, ks, y, 1e8, learning_rate=1.0, **kw)
    np.testing.assert_allclose(late.test, inf.test, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(late.train, inf.train, rtol=1e-9, atol=1e-10)
    # Ridge regression in closed form: u0* + K*(K + λI)^{-1}(Y − u0).
    direct = ks @ np.linalg.solve(np.asarray(kt) + 0.3 * np.eye(6), np.asarray(y - u0))
    np.testing.assert_allclose(inf.test, direct, rtol=1e-10, atol=1e-12)
    # The shared (n, n) kernel at a finite time equals the Kronecker form Θ ⊗ I_k.
    mid = nk.kernel_regression(kt, ks, y, 2.0, learning_rate=0.7, **kw)
    kron = nk.kernel_regression(
        jnp.kron(kt, jnp.eye(2)), jnp.kron(ks, jnp.eye(2)), y, 2.0, learning_rate=0.7, **kw
    )
    np.testing.assert_allclose(mid.test, kron.test, atol=1e-12)
    np.testing.assert_allclose(mid.train, kron.train, atol=1e-12)
    # A relative ridge is relative to the mean diagonal of Θ.
    rel = nk.kernel_regression(
        kt,
        ks,
        y,
        ridge=0.3 / float(jnp.mean(jnp.diag(kt))),
        relative_ridge=True,
        u0_train=u0,
        u0_test=jnp.zeros((4, 2)),
    )
    np.testing.assert_allclose(rel.test, inf.test, rtol=1e-10, atol=1e-12)


def test_non_symmetric_kernel_is_solved_by_lu_and_refuses_finite_time():
    key = jax.random.split(jax.random.key(8), 3)
    kt = jax.random.normal(key[0], (5, 5)) + 5.0 * jnp.eye(5)  # not symmetric
    ks = jax.random.normal(key[1], (3, 5))
    y = jax.random.normal(key[2], (5, 1))
    out = nk.kernel_regression(kt, ks, y, symmetric=False)
    np.testing.assert_allclose(out.test, ks @ np.linalg.solve(np.asarray(kt), y), rtol=1e-10)
    with pytest.raises(ValueError, match="symmetric"):
        nk.kernel_regression(kt, ks, y, 1.0, symmetric=False)


def test_example_runs(capsys):
    import pathlib
    import runpy

    path = pathlib.Path(__file__).parent.parent / "examples" / "infinite_width.py"
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    errs = [float(line.split("=")[1]) for line in out.splitlines() if line.startswith("width")]
    assert len(errs) == 3 and errs[2] < errs[0]  # wider is closer to the limit
    assert "infinite-width flow" in out
