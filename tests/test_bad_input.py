"""Every bad input the foundation names gets a clear error that names the argument."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small_sine

import ntkode as nk


@pytest.fixture(scope="module")
def setup():
    return small_sine()


def test_model_data_shape_mismatch(setup):
    model, data = setup
    wrong_in = eqx.nn.MLP(5, 1, 8, 1, key=jax.random.key(0), dtype=jnp.float64)
    with pytest.raises(
        ValueError, match=r"`x_train` examples have shape \(3,\) but the model .* of shape \(5,\)"
    ):
        nk.GradientFlowProblem(wrong_in, data)
    wrong_out = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0), dtype=jnp.float64)
    with pytest.raises(ValueError, match="2 output.*`y_train` have 1"):
        nk.GradientFlowProblem(wrong_out, data)


def test_data_target_mismatch():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="`x_train` has 5 examples but `y_train` has 4"):
        nk.Dataset(x, np.zeros(4))
    with pytest.raises(ValueError, match="`x_test` examples have shape"):
        nk.Dataset(x, np.zeros(5), np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="`y_train` must have shape"):
        nk.Dataset(x, np.zeros((5, 1, 1)))
    with pytest.raises(ValueError, match="both `x_test` and `y_test`"):
        nk.Dataset(x, np.zeros(5), x_test=x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data(bad):
    x = np.ones((4, 2))
    x[1, 0] = bad
    with pytest.raises(ValueError, match="`x_train` contains 1 non-finite"):
        nk.Dataset(x, np.zeros(4))
    y = np.zeros(4)
    y[2] = bad
    with pytest.raises(ValueError, match="`y_train` contains 1 non-finite"):
        nk.Dataset(np.ones((4, 2)), y)


def test_empty_data():
    with pytest.raises(ValueError, match="`x_train` is empty"):
        nk.Dataset(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="`n_train` must be at least 1"):
        nk.datasets.sine(0)


@pytest.mark.parametrize("lr", [0.0, -1.0, np.nan])
def test_non_positive_learning_rate(setup, lr):
    model, data = setup
    with pytest.raises(ValueError, match="`learning_rate` must be positive"):
        nk.GradientFlowProblem(model, data, learning_rate=lr)
    with pytest.raises(ValueError, match="`learning_rate` must be positive"):
        nk.KernelFlowProblem(jnp.eye(16), data, learning_rate=lr)


@pytest.mark.parametrize(("tspan", "word"), [((1.0, 0.0), "reversed"), ((1.0, 1.0), "empty")])
def test_reversed_or_empty_tspan(setup, tspan, word):
    model, data = setup
    with pytest.raises(ValueError, match=f"`tspan`.*is {word}"):
        nk.GradientFlowProblem(model, data, tspan=tspan)


def test_unknown_loss(setup):
    model, data = setup
    with pytest.raises(ValueError, match="Unknown `loss` 'hinge'"):
        nk.GradientFlowProblem(model, data, loss="hinge")


def test_kernel_shape_and_finiteness(setup):
    _, data = setup
    with pytest.raises(ValueError, match="`kernel_train` has shape \\(15, 16\\)"):
        nk.KernelFlowProblem(jnp.zeros((15, 16)), data)
    k = jnp.eye(16).at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="`kernel_train` contains 1 non-finite"):
        nk.KernelFlowProblem(k, data)


def test_max_steps_is_reported_and_can_raise(setup):
    model, data = setup
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 5.0))
    sol = nk.solve(problem, max_steps=3)
    assert sol.retcode == nk.RESULTS.max_steps_reached
    assert not sol.success
    assert "increase `max_steps`" in sol.message
    with pytest.raises(RuntimeError, match="max_steps"):
        nk.solve(problem, max_steps=3, throw=True)


def test_solve_arguments(setup):
    model, data = setup
    problem = nk.GradientFlowProblem(model, data, tspan=(0.0, 1.0))
    with pytest.raises(ValueError, match="`saveat` times must lie inside tspan"):
        nk.solve(problem, saveat=jnp.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        nk.solve(problem, saveat=jnp.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="`rtol` must be positive"):
        nk.solve(problem, rtol=-1.0)
    with pytest.raises(ValueError, match="`max_steps` must be a positive integer"):
        nk.solve(problem, max_steps=0)
    with pytest.raises(TypeError, match="expected an ntkode problem"):
        nk.solve("not a problem")
    with pytest.raises(ValueError, match="has no field"):
        nk.remake(problem, learning_rat=2.0)
    with pytest.raises(ValueError, match="`learning_rate` must be positive"):
        nk.remake(problem, learning_rate=-2.0)
    with pytest.raises(ValueError, match="Unknown `implementation`"):
        nk.ntk(model, data.x_train, implementation="magic")
