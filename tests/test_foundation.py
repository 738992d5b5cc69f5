"""Foundation: problems, solve, solutions — analytic, agreement and convergence checks."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import optax
import pytest
from helpers import Linearised, small_sine

import ntkode as nk
from ntkode._core import _solve as solve_module


def _linear(d=3, k=1, seed=0):
    return eqx.nn.Linear(d, k, key=jax.random.key(seed), dtype=jnp.float64)


def test_linear_model_ntk_is_augmented_gram():
    # Analytic: f = W x + b has Jacobian [x^T ⊗ I_k, I_k], so Θ = ([X 1][X 1]^T) ⊗ I_k.
    x = jax.random.normal(jax.random.key(3), (7, 3), jnp.float64)
    for k in (1, 2):
        theta = nk.ntk(_linear(3, k), x)
        xa = jnp.concatenate([x, jnp.ones((7, 1))], axis=1)
        expected = jnp.einsum("ij,ab->ijab", xa @ xa.T, jnp.eye(k))
        np.testing.assert_allclose(theta, expected, rtol=1e-12, atol=1e-12)


def test_ntk_equals_direct_jacobian_contraction():
    # Agreement: per-example reference vs jacrev of the flattened batch output.
    model, data = small_sine(n_train=6, out=2)
    x1, x2 = data.x_train, data.x_test[:4]
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def flat_jac(x):
        f = lambda p: jax.vmap(eqx.combine(p, static))(x).reshape(-1)
        leaves = jax.tree.leaves(jax.jacrev(f)(params))
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)

    direct = (flat_jac(x1) @ flat_jac(x2).T).reshape(6, 2, 4, 2).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(nk.ntk(model, x1, x2), direct, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        nk.ntk(model, x1, x2, trace=True), jnp.trace(direct, axis1=2, axis2=3), rtol=1e-10
    )


def test_linear_model_true_frozen_and_expm_agree():
    # For a linear model the NTK is constant: true flow = frozen flow = expm closed form.
    x = jax.random.normal(jax.random.key(0), (10, 3), jnp.float64)
    data = nk.Dataset(x, jnp.sin(x[:, :1]), x[:4] + 0.5, jnp.cos(x[:4, :1]))
    model = _linear()
    tspan, lr = (0.0, 3.0), 0.7
    true = nk.solve(
        nk.GradientFlowProblem(model, data, tspan=tspan, learning_rate=lr),
        rtol=1e-10,
        atol=1e-12,
        saveat=11,
    )
    frozen = nk.solve(
        nk.KernelFlowProblem.from_model(model, data, tspan=tspan, learning_rate=lr), saveat=11
    )
    theta = nk.ntk(model, data.x_train)[:, :, 0, 0]
    u0 = jax.vmap(model)(data.x_train)
    y = data.y_train
    for i, t in enumerate(true.t):
        expected = y + jsl.expm(-lr * theta * t / 10) @ (u0 - y)
        np.testing.assert_allclose(frozen.train[i], expected, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(true.train[i], expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(true.test, frozen.test, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("loss", [nk.losses.mse, nk.losses.cross_entropy])
def test_frozen_closed_form_or_ode_equals_linearised_true_flow(loss):
    # Agreement: a frozen-kernel flow is the true flow of the linearised network.
    model, data = small_sine(out=3)
    if loss is nk.losses.cross_entropy:
        labels = jax.nn.one_hot(jnp.argmax(jnp.abs(data.y_train) * jnp.arange(1, 4), -1), 3)
        data = nk.Dataset(data.x_train, labels, data.x_test, jnp.ones((8, 3)) / 3)
    else:
        data = nk.Dataset(
            data.x_train, jnp.tile(data.y_train, (1, 3)), data.x_test, jnp.tile(data.y_test, (1, 3))
        )
    tspan = (0.0, 4.0)
    lin = nk.solve(
        nk.GradientFlowProblem(Linearised(model), data, loss, tspan),
        rtol=1e-10,
        atol=1e-12,
        saveat=9,
    )
    frozen_problem = nk.KernelFlowProblem.from_model(model, data, loss, tspan)
    frozen = nk.solve(frozen_problem, saveat=9, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(frozen.train, lin.train, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(frozen.test, lin.test, rtol=1e-6, atol=1e-8)


def test_mse_closed_form_equals_ode_solve():
    model, data = small_sine()
    problem = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 20.0), learning_rate=2.0)
    exact = nk.solve(problem, saveat=21)
    ode = nk.solve(problem, diffrax.Dopri8(), saveat=21, rtol=1e-11, atol=1e-12)
    assert int(exact.num_steps) == 0 and int(ode.num_steps) > 0
    np.testing.assert_allclose(exact.train, ode.train, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(exact.test, ode.test, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(exact.train_dot, ode.train_dot, rtol=1e-7, atol=1e-9)


def test_t0_and_infinite_time_limits():
    model, data = small_sine()
    true = nk.solve(nk.GradientFlowProblem(model, data, tspan=(0.0, 1.0)), saveat=3)
    np.testing.assert_allclose(true.train[0], jax.vmap(model)(data.x_train), rtol=1e-12)
    np.testing.assert_allclose(true.test[0], jax.vmap(model)(data.x_test), rtol=1e-12)
    # t → ∞ for MSE with a positive-definite kernel: u → Y and u* → u*0 + Θ*Θ⁻¹(Y − u0),
    # i.e. kernel regression on the residual.
    fp = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 1e7))
    sol = nk.solve(fp, saveat=jnp.array([0.0, 1e7]))
    k, ks = fp.kernel_train, fp.kernel_test
    assert float(jnp.linalg.eigvalsh(k)[0]) > 1e-6  # PD, so the limit exists
    np.testing.assert_allclose(sol.train[-1], data.y_train, atol=1e-8)
    expected = fp.u0_test + ks @ jnp.linalg.solve(k, data.y_train - fp.u0_train)
    np.testing.assert_allclose(sol.test[-1], expected, rtol=1e-6, atol=1e-8)


def test_gradient_descent_approaches_flow_at_first_order():
    # Convergence: full-batch GD (optax SGD) with step h matches the flow at time T with error
    # O(h); halving h should halve the error (ratio 2 ± 0.3).
    model, data = small_sine()
    T = 2.0
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, T))
    flow = nk.solve(problem, saveat=jnp.array([0.0, T]), rtol=1e-11, atol=1e-12)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    loss = lambda p: nk.losses.mse(jax.vmap(eqx.combine(p, static))(data.x_train), data.y_train)

    def gd_outputs(h):
        opt = optax.sgd(h)
        p, state = params, opt.init(params)
        step = jax.jit(lambda p, s: _sgd_step(opt, loss, p, s))
        for _ in range(round(T / h)):
            p, state = step(p, state)
        return jax.vmap(eqx.combine(p, static))(data.x_train)

    errs = [float(jnp.linalg.norm(gd_outputs(h) - flow.train[-1])) for h in (0.04, 0.02, 0.01)]
    assert errs[0] > errs[1] > errs[2]
    for a, b in zip(errs, errs[1:], strict=False):
        assert 1.7 < a / b < 2.3, errs


def _sgd_step(opt, loss, p, s):
    g = jax.grad(loss)(p)
    updates, s = opt.update(g, s)
    return optax.apply_updates(p, updates), s


@pytest.mark.slow
def test_ensemble_equals_loop():
    model, data = small_sine()
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 2.0))
    lrs = [0.5, 1.0, 2.0]
    ens = nk.EnsembleProblem(problem, lambda p, i: nk.remake(p, learning_rate=lrs[i]), 3)
    sol = nk.solve(ens, saveat=5, rtol=1e-8, atol=1e-10)
    assert sol.t.shape == (3, 5) and np.all(sol.success)
    for i, lr in enumerate(lrs):
        one = nk.solve(nk.remake(problem, learning_rate=lr), saveat=5, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(sol[i].train, one.train, rtol=1e-10, atol=1e-12)
    # Seeds: different initialisations, same structure.
    seeds = nk.EnsembleProblem(problem, lambda p, i: nk.remake(p, model=small_sine(seed=i)[0]), 2)
    s2 = nk.solve(seeds, saveat=3)
    assert not np.allclose(s2.train[0], s2.train[1])


def test_interpolation_converges_at_fourth_order():
    # Convergence: cubic Hermite with exact slopes has error O(h^4); halving the spacing of
    # saved times should cut the error by ~16 (we require > 10 to allow pre-asymptotic h).
    # The exact MSE frozen flow makes the saved values and slopes exact, isolating `sol(t)`.
    model, data = small_sine()
    problem = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 4.0))
    fine = nk.solve(problem, saveat=jnp.linspace(0, 4, 129))
    errs = []
    for n in (17, 33, 65):
        coarse = nk.solve(problem, saveat=n)
        errs.append(float(jnp.max(jnp.abs(coarse(fine.t).train - fine.train))))
    assert errs[0] / errs[1] > 10 and errs[1] / errs[2] > 10, errs
    with pytest.raises(ValueError, match="outside the saved range"):
        coarse(5.0)


def test_tolerance_change_does_not_recompile():
    model, data = small_sine()
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 1.0))
    nk.solve(problem, rtol=1e-4)
    size = solve_module._solve_jit._cached._cache_size()
    nk.solve(problem, rtol=1e-6, atol=1e-9)
    assert solve_module._solve_jit._cached._cache_size() == size


def test_float32_end_to_end():
    model, data = small_sine(dtype=jnp.float32)
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 3.0))
    true = nk.solve(problem, saveat=7)
    assert true.train.dtype == jnp.float32 and true.success
    frozen = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 3.0))
    exact = nk.solve(frozen, saveat=7)
    ode = nk.solve(frozen, diffrax.Tsit5(), saveat=7, rtol=1e-6, atol=1e-7)
    assert exact.train.dtype == jnp.float32
    # float32 eigendecomposition: agreement to ~1e-5 relative on O(1) outputs.
    np.testing.assert_allclose(exact.train, ode.train, rtol=1e-4, atol=1e-5)
    assert float(true.train_loss[-1]) < float(true.train_loss[0])


def test_saved_weights_reproduce_saved_outputs():
    model, data = small_sine()
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 2.0))
    sol = nk.solve(problem, saveat=5, save_weights=True)
    _, static = eqx.partition(model, eqx.is_inexact_array)
    for i in (0, 4):
        w = jax.tree.map(lambda a: a[i], sol.weights)
        np.testing.assert_allclose(
            jax.vmap(eqx.combine(w, static))(data.x_train), sol.train[i], rtol=1e-12
        )
    with pytest.raises(ValueError, match="save_weights"):
        nk.solve(nk.KernelFlowProblem.from_model(model, data), save_weights=True)


def test_diffrax_event_passes_through():
    model, data = small_sine()
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 2.0))
    event = diffrax.Event(lambda t, y, args, **kwargs: t > 0.5)
    sol = nk.solve(problem, event=event, saveat=jnp.array([0.0, 0.25, 2.0]))
    assert sol.retcode == nk.RESULTS.event_occurred
    assert "event" in sol.message
