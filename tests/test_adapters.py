"""Models that are not equinox modules: functions and flax modules, through every entry point.

Evidence: the same network written in equinox, as a stax-style `apply(params, x)`, in flax
linen and in flax nnx, with the same weights, gives the same NTK (float64, 1e-12), the same
true flow and the same kernels downstream; the structured engine really taps flax layers;
convolutions and fixed state (batch statistics) are exact against the reference NTK.
"""

import functools
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import rel_max
from jax.example_libraries import stax

import ntkode as nk
from ntkode._ntk import _structured

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

F64 = jnp.float64
D, W, K = 3, 12, 2


@functools.cache
def _networks():
    """One tanh MLP `D → W → W → K`, written four ways with the same weights."""
    eqx_mlp = eqx.nn.MLP(D, K, W, 2, activation=jnp.tanh, key=jax.random.key(0), dtype=F64)
    weights = [(layer.weight, layer.bias) for layer in eqx_mlp.layers]

    class LinenMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in (W, W):
                x = jnp.tanh(nn.Dense(width, param_dtype=F64)(x))
            return nn.Dense(K, param_dtype=F64)(x)

    variables = {
        "params": {f"Dense_{i}": {"kernel": w.T, "bias": b} for i, (w, b) in enumerate(weights)}
    }

    class NNXMLP(nnx.Module):
        def __init__(self, rngs):
            sizes = [(D, W), (W, W), (W, K)]
            self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs, param_dtype=F64) for i, o in sizes])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jnp.tanh(layer(x))
            return self.layers[-1](x)

    nnx_mlp = NNXMLP(nnx.Rngs(0))
    for layer, (w, b) in zip(nnx_mlp.layers, weights, strict=True):
        layer.kernel[...], layer.bias[...] = w.T, b

    _, stax_apply = stax.serial(stax.Dense(W), stax.Tanh, stax.Dense(W), stax.Tanh, stax.Dense(K))
    stax_params = [(weights[0][0].T, weights[0][1]), (), (weights[1][0].T, weights[1][1]), ()]
    stax_params.append((weights[2][0].T, weights[2][1]))
    return {
        "equinox": eqx_mlp,
        "apply": nk.from_apply(stax_apply, stax_params),
        "linen": nk.from_flax(LinenMLP(), variables),
        "nnx": nk.from_flax(nnx_mlp),
    }


def _x(n=9, key=1):
    return jax.random.normal(jax.random.key(key), (n, D), F64)


def _data():
    x, xs = _x(10, 1), _x(6, 2)
    y = lambda z: jnp.sin(z.sum(1, keepdims=True)) + z[:, :K] ** 2
    return nk.Dataset(x, y(x), xs, y(xs))


def _plan(model, shape):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return _structured._make_plan(params, static, jax.ShapeDtypeStruct(shape, F64), False)


FLAVOURS = ["apply", "linen", "nnx"]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("implementation", ["structured", "jacobian", "ntvp"])
def test_ntk_equals_equinox(flavour, implementation):
    nets = _networks()
    x1, x2 = _x(9, 1), _x(5, 2)
    ref = nk.ntk(nets["equinox"], x1, x2, implementation="reference")
    got = nk.ntk(nets[flavour], x1, x2, implementation=implementation)
    # Same weights, same float64 arithmetic up to summation order.
    assert rel_max(got, ref) < 1e-12


def test_structured_engine_taps_flax_layers_and_not_functions():
    nets = _networks()
    for flavour in ("linen", "nnx"):
        plan = _plan(nets[flavour], (D,))
        assert plan is not None, flavour
        # All three dense layers take the Gram route; nothing is left to Jacobians.
        assert plan.scales == [(1.0, 1.0)] * 3, flavour
        assert jax.tree.leaves(plan.rest) == [], flavour
    # A function is opaque: the structured implementation falls back to Jacobians.
    assert _plan(nets["apply"], (D,)) is None


TS = jnp.linspace(0.0, 2.0, 5)


@functools.cache
def _true_flow(flavour):
    """The true gradient flow of one flavour, weights saved at `TS` (solved once per run)."""
    model, data = _networks()[flavour], _data()
    sol = nk.solve(
        nk.GradientFlowProblem(model, data, tspan=(0.0, 2.0)),
        saveat=TS,
        save_weights=True,
        rtol=1e-10,
        atol=1e-12,
    )
    return model, data, sol


@functools.cache
def _frozen_flow(flavour):
    model, data = _networks()[flavour], _data()
    return nk.solve(nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 2.0)))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_true_flow_and_frozen_flow_equal_equinox(flavour):
    ref, got = _true_flow("equinox")[2], _true_flow(flavour)[2]
    assert got.success
    # Two solves of the same ODE at rtol 1e-10 (the steps may differ in the last digits).
    assert rel_max(got.train, ref.train) < 1e-9
    assert rel_max(got.test, ref.test) < 1e-9
    frozen_ref, frozen = _frozen_flow("equinox"), _frozen_flow(flavour)
    assert rel_max(frozen.train, frozen_ref.train) < 1e-12
    assert rel_max(frozen.test, frozen_ref.test) < 1e-12


def test_kernel_grid_from_solution_equals_equinox():
    runs = {f: _true_flow(f) for f in ("equinox", "linen")}
    times = TS[jnp.array([0, 1, 2, 4])]
    grids = {f: nk.KernelGrid.from_solution(s, times, m, d) for f, (m, d, s) in runs.items()}
    # Kernels at weights saved by two rtol-1e-10 solves of the same flow.
    assert rel_max(grids["linen"].kernel_train, grids["equinox"].kernel_train) < 1e-9
    assert rel_max(grids["linen"].kernel_test, grids["equinox"].kernel_test) < 1e-9


@pytest.mark.slow
def test_tune_grid_on_time_nodes_equals_equinox():
    runs = {f: _true_flow(f) for f in ("equinox", "linen")}
    times = TS[jnp.array([0, 1, 2, 4])]
    tuned = {}
    for f, (m, d, s) in runs.items():
        grid = nk.KernelGrid.from_solution(s, times, m, d)
        problem = nk.ScheduledKernelProblem(grid, d, tspan=(0.0, 2.0))
        tuned[f] = nk.tune_grid(
            problem, s, nodes="time", model=m, steps=2, optimiser=optax.adam(0.1)
        )
    np.testing.assert_allclose(tuned["linen"].history, tuned["equinox"].history, rtol=1e-7)
    np.testing.assert_allclose(tuned["linen"].times, tuned["equinox"].times, rtol=1e-7)


@pytest.mark.slow
def test_path_kernel_equals_equinox():
    nets, data = _networks(), _data()
    method = nk.PathGradientDescent(10, nodes=4)
    # A stable step: the largest eigenvalue of Θ/n here is ≈ 2.07, so η = 1 would make
    # gradient descent diverge and amplify the flavours' round-off differences to ~1e-8.
    problem = lambda m: nk.GradientFlowProblem(m, data, tspan=(0.0, 1.0), learning_rate=0.1)
    pks = {f: nk.path_kernel(problem(nets[f]), data.x_test, method) for f in ("equinox", "linen")}
    assert rel_max(pks["linen"].kernel, pks["equinox"].kernel) < 1e-10
    assert rel_max(pks["linen"].outputs, pks["equinox"].outputs) < 1e-10


def test_ntk_vp_and_operator_accept_adapters():
    nets, x = _networks(), _x(7)
    v = jax.random.normal(jax.random.key(5), (7, K), F64)
    ref = nk.ntk_vp(nets["equinox"], x, v)
    for flavour in FLAVOURS:
        assert rel_max(nk.ntk_vp(nets[flavour], x, v), ref) < 1e-12
        op = nk.ntk_operator(nets[flavour], x)
        assert rel_max(op.mv(v.reshape(-1)), ref.reshape(-1)) < 1e-12


def _assert_cnn_exact(model, x):
    plan = _plan(model, x.shape[1:])
    assert plan is not None and plan.scales[-1] == (1.0, 1.0)  # the dense head: Gram
    ref = nk.ntk(model, x, implementation="reference")
    assert rel_max(nk.ntk(model, x, implementation="structured"), ref) < 1e-12


CNN_X = (3, 6, 6, 2)


def test_linen_convolutions_and_fixed_state_are_exact():
    x = jax.random.normal(jax.random.key(0), CNN_X, F64)

    class LinenCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), param_dtype=F64)(x))
            x = nn.Conv(3, (3, 3), strides=2, padding="VALID", param_dtype=F64)(x)
            x = nn.BatchNorm(use_running_average=True, param_dtype=F64)(x)
            return nn.Dense(2, param_dtype=F64)(x.reshape(-1))

    cnn = LinenCNN()
    variables = cnn.init(jax.random.key(1), x[0])
    # Non-trivial running statistics, held fixed: not parameters of the adapter.
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda a: a + 0.3, variables["batch_stats"]),
    }
    model = nk.from_flax(cnn, variables)
    n_params = sum(a.size for a in jax.tree.leaves(variables["params"]))
    assert sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))) == (
        n_params
    )
    _assert_cnn_exact(model, x)


@pytest.mark.slow
def test_nnx_convolutions_and_fixed_state_are_exact():
    x = jax.random.normal(jax.random.key(0), CNN_X, F64)

    class NNXCNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(2, 4, (3, 3), rngs=rngs, param_dtype=F64)
            self.c2 = nnx.Conv(4, 3, (3, 3), strides=2, padding="VALID", rngs=rngs, param_dtype=F64)
            self.bn = nnx.BatchNorm(3, use_running_average=True, rngs=rngs, param_dtype=F64)
            self.out = nnx.Linear(12, 2, rngs=rngs, param_dtype=F64)

        def __call__(self, x):
            return self.out(self.bn(self.c2(nnx.relu(self.c1(x)))).reshape(-1))

    _assert_cnn_exact(nk.from_flax(NNXCNN(nnx.Rngs(0))), x)


def test_shared_and_tied_layers_fall_back_and_stay_exact():
    x = _x(6)

    class Tied(nn.Module):  # reads its Dense's kernel directly: weight tying
        @nn.compact
        def __call__(self, x):
            dense = nn.Dense(D, param_dtype=F64)
            return jnp.tanh(dense(x)) @ dense.variables["params"]["kernel"].T

    tied = Tied()
    tied_model = nk.from_flax(tied, tied.init(jax.random.key(0), x[0]))
    assert _plan(tied_model, (D,)) is None  # the tap finds its weights missing: Jacobians

    class Shared(nnx.Module):  # one Linear reached by two paths of the graph
        def __init__(self, rngs):
            self.a = nnx.Linear(D, D, rngs=rngs, param_dtype=F64)
            self.b = self.a
            self.head = nnx.Linear(D, 1, rngs=rngs, param_dtype=F64)

        def __call__(self, x):
            return self.head(jnp.tanh(self.b(jnp.tanh(self.a(x)))))

    shared_model = nk.from_flax(Shared(nnx.Rngs(0)))
    plan = _plan(shared_model, (D,))
    assert plan is not None and len(plan.scales) == 1  # only the head is tapped
    for model in (tied_model, shared_model):
        ref = nk.ntk(model, x, implementation="reference")
        assert rel_max(nk.ntk(model, x), ref) < 1e-12


@pytest.mark.slow
def test_dense_on_a_sequence_and_batched_models():
    class PerToken(nn.Module):  # a Dense applied to every row of a (4, 3) input
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(nn.Dense(5, param_dtype=F64)(x.reshape(4, 3)))
            return nn.Dense(1, param_dtype=F64)(h.reshape(-1))

    x = jax.random.normal(jax.random.key(0), (6, 12), F64)
    module = PerToken()
    model = nk.from_flax(module, module.init(jax.random.key(1), x[0]))
    assert len(_plan(model, (12,)).out_shapes[0]) == 4  # four calls of the first layer
    ref = nk.ntk(model, x, implementation="reference")
    assert rel_max(nk.ntk(model, x), ref) < 1e-12

    # stax convolutions need a batch axis: `batched=True` gives them a batch of one.
    layers = (stax.Conv(3, (3, 3), padding="SAME"), stax.Tanh, stax.Flatten, stax.Dense(2))
    init, apply = stax.serial(*layers)
    _, params = init(jax.random.key(2), (1, 5, 5, 2))
    params = jax.tree.map(lambda a: a.astype(F64), params)
    xs = jax.random.normal(jax.random.key(3), (4, 5, 5, 2), F64)
    batched = nk.from_apply(apply, params, batched=True)
    k = nk.ntk(batched, xs)
    assert k.shape == (4, 4, 2, 2)
    assert rel_max(k, nk.ntk(batched, xs, implementation="reference")) < 1e-12


def test_bad_input_says_what_to_do():
    nets, x = _networks(), _x(4)
    _, stax_apply = stax.serial(stax.Dense(W), stax.Dense(K))
    # An apply that fails on one example (here: it indexes a batch axis).
    broken = nk.from_apply(lambda p, xb: stax_apply(p, xb)[:, 0], nets["apply"].params[::2][:2])
    with pytest.raises(ValueError, match=r"`apply` failed on one example.*batched=True"):
        nk.ntk(broken, x)
    with pytest.raises(TypeError, match=r"`params\[0\]\['w'\]` is a str"):
        nk.from_apply(stax_apply, [{"w": "weights"}])
    with pytest.raises(TypeError, match=r"Python/NumPy scalar 0.5.*jnp.asarray"):
        nk.from_apply(stax_apply, {"w": jnp.ones(3), "b": 0.5})
    with pytest.raises(ValueError, match="no floating-point arrays"):
        nk.from_apply(stax_apply, {"steps": jnp.arange(3)})
    with pytest.raises(TypeError, match="apply\\(params, x\\)"):
        nk.from_apply(nets["apply"].params, stax_apply)
    with pytest.raises(ValueError, match=r"holds no weights.*module.init\(key, x\)"):
        nk.from_flax(nn.Dense(3))
    with pytest.raises(ValueError, match="'params' collection"):
        nk.from_flax(nn.Dense(3), nets["linen"].params)
    with pytest.raises(ValueError, match="nnx module holds its own state"):
        nk.from_flax(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), {"params": {}})
    with pytest.raises(TypeError, match="flax linen or nnx module"):
        nk.from_flax(nets["equinox"])


def test_import_ntkode_does_not_import_flax():
    code = (
        "import sys, ntkode; print(sorted(m for m in ('flax', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
