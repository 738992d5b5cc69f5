"""Path kernels (Domingos 2020): the reconstruction identity, continuous and discrete; the
linear model's closed form; kernel machines from one run."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkode as nk
from ntkode._core._model import apply
from ntkode._path._path_kernel import jacobian, tangent_kernel


def _tanh_problem(t1=10.0, lr=0.5, dtype=jnp.float64, n=8, m=4):
    data = nk.datasets.sine(n, m, 3, key=jax.random.key(0), dtype=dtype)
    model = eqx.nn.MLP(3, 1, 16, 2, activation=jnp.tanh, key=jax.random.key(1), dtype=dtype)
    return nk.GradientFlowProblem(model, data, tspan=(0.0, t1), learning_rate=lr)


def _queries(problem):
    return jnp.concatenate([problem.data.x_train, problem.data.x_test])


def test_jacobian_kernel_agrees_with_ntk():
    p = _tanh_problem()
    q, x = _queries(p), p.data.x_train
    jq, jx = jacobian(p.model, q), jacobian(p.model, x)
    # Same contraction as the reference NTK, up to summation order (float64 rounding).
    np.testing.assert_allclose(tangent_kernel(jq, jx, False), nk.ntk(p.model, q, x), atol=1e-12)
    np.testing.assert_allclose(
        tangent_kernel(jq, jx, True), nk.ntk(p.model, q, x, trace=True), atol=1e-12
    )


def test_flow_reconstruction_identity_float64():
    p = _tanh_problem()
    pk = nk.path_kernel(p, _queries(p), rtol=1e-10, atol=1e-12)
    assert pk.kernel.shape == (12, 8, 1, 1) and pk.weights.shape == (12, 8, 1)
    # The bar: relative residual ≤ 1e-6 with tight tolerances (measured ~2e-12).
    assert float(pk.residual) <= 1e-6
    np.testing.assert_allclose(pk.reconstruction, pk.outputs, rtol=0, atol=1e-8)
    # b is the network at initialisation, and the trained weights are those of solve().
    np.testing.assert_allclose(pk.bias, apply(p.model, _queries(p)), atol=0)
    sol = nk.solve(p, rtol=1e-10, atol=1e-12, saveat=2)
    np.testing.assert_allclose(pk.outputs[:8], sol.train[-1], atol=1e-8)
    np.testing.assert_allclose(pk.outputs[8:], sol.test[-1], atol=1e-8)


def test_flow_residual_falls_with_tolerance():
    p = _tanh_problem()
    loose = float(nk.path_kernel(p, _queries(p), rtol=1e-5, atol=1e-7).residual)
    tight = float(nk.path_kernel(p, _queries(p), rtol=1e-9, atol=1e-11).residual)
    # The residual is the solver's error on f(θ_T): 4 decades of tolerance buy > 2 decades.
    assert loose > 0 and tight < loose / 100


def test_gd_reconstruction_at_machine_precision():
    p = _tanh_problem(lr=0.5)
    pk = nk.path_kernel_gd(p, _queries(p), 10, nodes=8)
    # Gauss–Legendre with 8 nodes on smooth step segments: rounding only (measured ~1e-15).
    assert float(pk.residual) < 1e-12
    # The weights are exactly those of a hand-written gradient-descent loop.
    params, static = eqx.partition(p.model, eqx.is_inexact_array)
    loss = lambda q: nk.losses.mse(apply(eqx.combine(q, static), p.data.x_train), p.data.y_train)
    for _ in range(10):
        params = jax.tree.map(lambda a, g: a - 0.5 * g, params, jax.grad(loss)(params))
    np.testing.assert_allclose(
        pk.outputs, apply(eqx.combine(params, static), _queries(p)), rtol=0, atol=1e-13
    )
    # One node (segment midpoint) is not exact: the check can fail for the right reason.
    assert float(nk.path_kernel_gd(p, _queries(p), 10, nodes=1).residual) > 1e-8


def test_gd_float32():
    p = _tanh_problem(dtype=jnp.float32)
    pk = nk.path_kernel_gd(p, _queries(p), 10, nodes=4)
    assert pk.kernel.dtype == jnp.float32
    # float32 rounding over 10 steps (measured ~1e-6); midpoint-rule error would be ~1e-3.
    assert float(pk.residual) < 1e-4


def _linear_closed_form(p, T):
    """∫_0^T ∇_u L dt for the frozen (exact, linear model) MSE flow, per training example."""
    x, y = p.data.x_train, p.data.y_train
    n, k = y.shape
    theta = nk.ntk(p.model, x, trace=True) / k  # (x·x' + 1), the same for every output
    c = float(p.learning_rate) / n
    lam, vec = jnp.linalg.eigh(theta)
    r0 = apply(p.model, x) - y
    integral = jnp.where(lam * c * T > 1e-12, -jnp.expm1(-c * lam * T) / (c * lam), T)
    return vec @ (integral[:, None] * (vec.T @ r0)) / n, theta


@pytest.mark.parametrize("k", [1, 2])
def test_linear_model_closed_form(k):
    data = nk.datasets.sine(6, 3, 4, key=jax.random.key(2))
    data = nk.Dataset(data.x_train, jnp.tile(data.y_train, (1, k)), data.x_test,
                      jnp.tile(data.y_test, (1, k)))  # fmt: skip
    model = eqx.nn.Linear(4, k, key=jax.random.key(3), dtype=jnp.float64)
    T, lr = 5.0, 0.7
    p = nk.GradientFlowProblem(model, data, tspan=(0.0, T), learning_rate=lr)
    q = _queries(p)
    pk = nk.path_kernel(p, q, rtol=1e-11, atol=1e-13)
    # K_path = T·Θ: the linear model's NTK [x 1][x' 1]ᵀ ⊗ I_k never moves.
    np.testing.assert_allclose(pk.kernel, T * nk.ntk(model, q, data.x_train), rtol=1e-10)
    # a_i = -η/T ∫ ∇_{u_i}L dt, the same for every query (Domingos' weights, closed form).
    G, _ = _linear_closed_form(p, T)
    expected = jnp.broadcast_to(-lr / T * G, pk.weights.shape)
    np.testing.assert_allclose(pk.weights, expected, rtol=1e-7, atol=1e-12)
    assert float(pk.residual) < 1e-8
    # Discrete: J is constant, so one node is exact and K_path = steps·Θ.
    gd = nk.path_kernel_gd(p, q, 5, nodes=1)
    np.testing.assert_allclose(gd.kernel, 5 * nk.ntk(model, q, data.x_train), rtol=1e-12)
    assert float(gd.residual) < 1e-13


def test_kernel_machines_equal_linear_network():
    # Overparametrised linear model (d = 12 > n = 6) trained long: the network converges to
    # the minimum-norm interpolant f0 + Θ*Θ⁻¹(Y − f0), which is kernel regression with any
    # of the three (here proportional) kernels.
    data = nk.datasets.sine(6, 5, 12, key=jax.random.key(4))
    model = eqx.nn.Linear(12, 1, key=jax.random.key(5), dtype=jnp.float64)
    p = nk.GradientFlowProblem(model, data, tspan=(0.0, 400.0), learning_rate=1.0)
    comp = nk.compare_kernels(p, ridge=0.0, rtol=1e-10, atol=1e-12)
    for name in ("ntk_init", "ntk_final", "path"):
        # exp(-η λ_min T / n) residual of the flow is ~1e-9 here; solver error ~1e-9.
        assert comp.errors()[name]["vs_network"] < 1e-6, name
    assert float(comp.path_kernel.residual) < 1e-8


def test_compare_kernels_gd_traced():
    p = _tanh_problem(lr=0.5)
    comp = nk.compare_kernels(p, method="gd", steps=10, nodes=4, trace=True, ridge=1e-10)
    assert comp.network.shape == comp.path.shape == (4, 1)
    # Kernel regressions interpolate the training targets (ridge 1e-10).
    for name in ("ntk_init", "ntk_final", "path"):
        np.testing.assert_allclose(comp.train[name], p.data.y_train, atol=1e-5)
    assert float(comp.path_kernel.residual) < 1e-10


def test_bad_queries():
    p = _tanh_problem()
    with pytest.raises(ValueError, match="queries"):
        nk.path_kernel(p, jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="queries"):
        nk.path_kernel_gd(p, jnp.zeros((4,)), 2)
    with pytest.raises(ValueError, match="queries"):
        nk.path_kernel(p, jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        nk.path_kernel(p, jnp.full((2, 3), jnp.nan))


def test_bad_problem_and_options():
    p = _tanh_problem(t1=2.5)
    kp = nk.KernelFlowProblem(jnp.eye(8), p.data)
    with pytest.raises(TypeError, match="GradientFlowProblem"):
        nk.path_kernel(kp, p.data.x_test)
    with pytest.raises(ValueError, match="whole number"):
        nk.path_kernel_gd(p, p.data.x_test)
    with pytest.raises(ValueError, match="nodes"):
        nk.path_kernel_gd(p, p.data.x_test, 2, nodes=0)
    with pytest.raises(ValueError, match="stride"):
        nk.path_kernel_gd(p, p.data.x_test, 5, stride=2)
    with pytest.raises(ValueError, match="method"):
        nk.compare_kernels(p, method="sgd")


def test_diverging_gd_is_reported():
    # A linear model with η far beyond 2/λ_max grows geometrically until it overflows.
    data = nk.datasets.sine(6, 3, 4, key=jax.random.key(2))
    model = eqx.nn.Linear(4, 1, key=jax.random.key(3), dtype=jnp.float64)
    p = nk.GradientFlowProblem(model, data, learning_rate=100.0)
    pk = nk.path_kernel_gd(p, data.x_test, 400, nodes=1)
    assert pk.result == nk.RESULTS.diverged
    with pytest.raises(RuntimeError, match="learning rate"):
        nk.compare_kernels(p, method="gd", steps=400, nodes=1)
