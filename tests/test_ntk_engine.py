"""The fast NTK engine agrees with direct Jacobian contraction (`ntk_reference`).

Evidence of agreement: every implementation, full kernel and trace, blocked and unblocked,
on one device and on four simulated ones, equals the reference built from per-example
Jacobians. Float64 tolerances are ~1e4 ulp relative to the kernel's scale: the
implementations sum the same products in different orders, nothing more.
"""

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import ntkode as nk
from ntkode._core._model import partition
from ntkode._infinite._mlp import Dense
from ntkode._ntk import ntk_reference
from ntkode._ntk._structured import _make_plan

RTOL64 = 1e-11  # relative to max |Θ|; float64 reassociation error is ~1e-15 per term
IMPLS = ["structured", "jacobian", "ntvp", "auto"]


def _key(i):
    return jax.random.key(i)


class SharedLinear(eqx.Module):
    """The same Linear applied twice (weight sharing by reuse: two calls per example)."""

    inner: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.inner = eqx.nn.Linear(4, 4, key=k1)
        self.out = eqx.nn.Linear(4, 2, key=k2)

    def __call__(self, x):
        return self.out(jnp.tanh(self.inner(jnp.tanh(self.inner(x)))))


class TiedAutoencoder(eqx.Module):
    """Decoder weight is the encoder weight transposed (reads a layer's weight directly)."""

    enc: eqx.nn.Linear

    def __call__(self, x):
        h = jnp.tanh(self.enc(x))
        return self.enc.weight.T @ h


class LayerNormNet(eqx.Module):
    l1: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    l2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.l1 = eqx.nn.Linear(4, 6, key=k1)
        self.norm = eqx.nn.LayerNorm(6)
        self.l2 = eqx.nn.Linear(6, 2, key=k2)

    def __call__(self, x):
        return self.l2(jax.nn.gelu(self.norm(self.l1(x))))


class Custom(eqx.Module):
    """No equinox layers at all: raw arrays (the structured path must fall back)."""

    w: jax.Array
    v: jax.Array

    def __call__(self, x):
        return jnp.sin(self.v @ jnp.tanh(self.w @ x)) + jnp.sum(self.w**2) * x[:1]


class ListWeights(eqx.Module):
    """Weights held as Python floats: not arrays, so not differentiable parameters."""

    w: list

    def __call__(self, x):
        return jnp.stack([sum(wi * xi for wi, xi in zip(self.w, x))])


class TrainedScaleDense(nk.AbstractDense):
    """A dense layer whose multiplier $s_w = e^{c}$ is itself trained: not a number the Gram
    route can use, so this layer takes the local Jacobian route (and `c` the Jacobian one)."""

    weight: jax.Array
    bias: jax.Array | None
    log_scale: jax.Array

    @property
    def scales(self):
        return jnp.exp(self.log_scale), 1.0


def _trained_scale(key):
    k1, k2 = jax.random.split(key)
    layer = TrainedScaleDense(
        jax.random.normal(k1, (3, 4)), jax.random.normal(k2, (3,)), jnp.asarray(-0.3)
    )
    return eqx.nn.Sequential([layer, eqx.nn.Lambda(jnp.tanh), eqx.nn.Linear(3, 2, key=key)])


def _cnn(key, dtype=None):
    k1, k2, k3 = jax.random.split(key, 3)
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 3, 3, padding=1, key=k1, dtype=dtype),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(3, 3, 3, stride=2, key=k2, dtype=dtype),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(3 * 2 * 2, 2, key=k3, dtype=dtype),
        ]
    )


MODELS = {
    "mlp": (lambda: eqx.nn.MLP(4, 1, 8, 2, activation=jnp.tanh, key=_key(1)), (4,), True),
    "cnn": (lambda: _cnn(_key(2)), (2, 5, 5), True),
    "multi_output": (
        lambda: eqx.nn.MLP(4, 3, 8, 2, activation=jax.nn.relu, key=_key(3)),
        (4,),
        True,
    ),
    "shared_weights": (lambda: SharedLinear(_key(4)), (4,), True),
    "tied_weights": (lambda: TiedAutoencoder(eqx.nn.Linear(4, 3, key=_key(5))), (4,), False),
    "layer_norm": (lambda: LayerNormNet(_key(6)), (4,), True),
    "custom": (
        lambda: Custom(jax.random.normal(_key(7), (5, 4)), jax.random.normal(_key(8), (2, 5))),
        (4,),
        False,
    ),
    "ntkode_mlp": (lambda: nk.MLP(4, 3, 8, 2, "tanh", b_std=0.3, key=_key(9)), (4,), True),
    "trained_scale": (lambda: _trained_scale(_key(23)), (4,), True),
}


def _close(a, b, rtol=RTOL64):
    scale = float(jnp.max(jnp.abs(b)))
    assert a.shape == b.shape
    err = float(jnp.max(jnp.abs(a - b)))
    assert err <= rtol * scale, f"max error {err:.3e} > {rtol:.1e} × {scale:.3e}"


@pytest.mark.parametrize("name", list(MODELS))
def test_structured_path_taken_or_fallen_back(name):
    build, shape, structured = MODELS[name]
    params, static = partition(build())
    plan = _make_plan(params, static, jax.ShapeDtypeStruct(shape, jnp.float64), False)
    # Models built from Linear/Conv layers are tapped; tied weights and raw arrays are not.
    assert (plan is not None) == structured


@pytest.mark.parametrize("name", list(MODELS))
def test_all_implementations_agree_with_reference(name):
    build, shape, _ = MODELS[name]
    model = build()
    x1 = jax.random.normal(_key(10), (5,) + shape)
    x2 = jax.random.normal(_key(11), (3,) + shape)
    ref12, ref11 = ntk_reference(model, x1, x2), ntk_reference(model, x1)
    for impl in IMPLS:  # "auto" resolves to the same compiled function as "structured"
        _close(nk.ntk(model, x1, x2, implementation=impl), ref12)
        if impl != "ntvp":  # ntvp shares all but the final transpose with the x2 case
            _close(nk.ntk(model, x1, implementation=impl), ref11)
    _close(nk.ntk(model, x1, x2, trace=True), jnp.trace(ref12, 0, 2, 3))


def test_conv_jacobians_in_uneven_chunks(monkeypatch):
    """Convolution Jacobians taken a few examples at a time (a chunk size that does not
    divide n, one loop per core, padded examples cut off) equal the reference, and so do the
    symmetric blocked path's mirrored blocks of a convolutional model."""
    from ntkode._ntk import _layers

    monkeypatch.setattr(_layers, "_PATCH_BYTES", 1)  # one example per chunk
    k1, k2 = jax.random.split(_key(30))
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv1d(2, 4, 3, padding="SAME", key=k1),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(4 * 6, 2, key=k2),
        ]
    )
    x = jax.random.normal(_key(31), (7, 2, 6))
    ref = ntk_reference(model, x)
    _close(nk.ntk(model, x, implementation="structured"), ref)
    monkeypatch.setattr(_layers, "_PATCH_BYTES", 3 * 2 * 6 * 3 * 8)  # three per chunk
    k = nk.ntk(model, x, implementation="structured", block_size=3)
    _close(k, ref)
    assert jnp.array_equal(k, jnp.swapaxes(jnp.swapaxes(k, 0, 1), 2, 3))


@pytest.mark.parametrize("impl", ["structured", "jacobian", "ntvp"])
def test_blocking_matches_unblocked(impl):
    model = MODELS["multi_output"][0]()
    x1 = jax.random.normal(_key(12), (7, 4))
    x2 = jax.random.normal(_key(13), (5, 4))
    # A block size that does not divide n (padding), and one larger than n (no blocking).
    _close(nk.ntk(model, x1, x2, implementation=impl, block_size=3), ntk_reference(model, x1, x2))
    _close(
        nk.ntk(model, x1, implementation=impl, block_size=3, trace=True),
        jnp.trace(ntk_reference(model, x1), 0, 2, 3),
    )
    _close(nk.ntk(model, x1, implementation=impl, block_size=10), ntk_reference(model, x1))


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("bias", [0.3, None])
@pytest.mark.parametrize("outputs", [1, 3])
def test_engine_on_ntkode_mlp(parameterization, bias, outputs):
    # ntkode's own MLP (s_w = σ_w/√n_in, s_b = σ_b in the NTK parameterisation) is tapped
    # through its AbstractDense layers: every layer takes the Gram route, with its scales.
    net = nk.MLP(5, outputs, 16, 2, "tanh", W_std=1.3, b_std=bias, out_b_std=bias,
                 parameterization=parameterization, key=_key(30))  # fmt: skip
    params, static = partition(net)
    plan = _make_plan(params, static, jax.ShapeDtypeStruct((5,), jnp.float64), False)
    # Hidden layers take the Gram route; a one-output readout's Jacobian is as cheap (the
    # cost model's choice), and either route carries the scales.
    assert plan is not None and all(s is not None for s in plan.scales[:-1])
    if parameterization == "ntk":
        assert plan.scales[0] == pytest.approx((1.3 / 5**0.5, bias or 0.0))
    x1 = jax.random.normal(_key(31), (7, 5))
    x2 = jax.random.normal(_key(32), (3, 5))
    _close(nk.ntk(net, x1, x2), ntk_reference(net, x1, x2), rtol=1e-12)
    _close(nk.ntk(net, x1, trace=True), jnp.trace(ntk_reference(net, x1), 0, 2, 3), rtol=1e-12)


def test_dense_layer_kernel_in_closed_form():
    # One NTK-parameterised layer f(x) = s_w W x + s_b b is linear in its weights:
    # Θ(x, x') = (s_w² x·x' + s_b²) I_k exactly, whatever W and b are.
    layer = Dense(6, 2, 1.7, 0.4, "ntk", key=_key(33))
    sw, sb = layer.scales
    assert (sw, sb) == pytest.approx((1.7 / 6**0.5, 0.4))
    x1 = jax.random.normal(_key(34), (5, 6))
    x2 = jax.random.normal(_key(35), (4, 6))
    expect = (sw**2 * x1 @ x2.T + sb**2)[:, :, None, None] * jnp.eye(2)
    _close(nk.ntk(layer, x1, x2), expect, rtol=1e-13)


@pytest.mark.parametrize("impl", [nk.StructuredNTK(), nk.JacobianNTK(), nk.NTVPNTK()])
def test_weight_outputs_contracts_the_kernel_with_output_weights(impl):
    # Σ_b Θ(x1, x2_j)_ab w_jb as one contraction against the one-output model w_j·f(x2_j):
    # the loss-weighted rate of a path kernel (and the same with the weights on the rows).
    for name in ("multi_output", "cnn", "shared_weights", "custom"):
        build, shape, _ = MODELS[name]
        model = build()
        params, static = partition(model)
        x1 = jax.random.normal(_key(36), (5,) + shape)
        x2 = jax.random.normal(_key(37), (4,) + shape)
        ref = ntk_reference(model, x1, x2)
        v = jax.random.normal(_key(39), (5, ref.shape[-1]))
        w = jax.random.normal(_key(38), (4, ref.shape[-1]))

        @eqx.filter_jit
        def weighted(params, x1, x2, v, w):
            f1, f2 = impl.features(params, static, x1), impl.features(params, static, x2)
            cols = impl.contract(params, static, f1, impl.weight_outputs(f2, w), False)
            rows = impl.contract(params, static, impl.weight_outputs(f1, v), f2, False)
            return cols, rows

        cols, rows = weighted(params, x1, x2, v, w)
        assert cols.shape == ref.shape[:3] + (1,) and rows.shape == ref.shape[:2] + (
            1,
            ref.shape[-1],
        ), name
        _close(cols[..., 0], jnp.einsum("ijab,jb->ija", ref, w))
        _close(rows[:, :, 0], jnp.einsum("ijab,ia->ijb", ref, v))


def test_symmetric_blocks_uneven_split():
    """x2=None with n ≥ 512 computes only upper blocks (here three unequal ones)."""
    model = eqx.nn.MLP(3, 2, 6, 1, key=_key(14))
    x = jax.random.normal(_key(15), (901, 3))
    ref = ntk_reference(model, x)
    for impl in ("structured", "jacobian"):
        k = nk.ntk(model, x, implementation=impl)
        _close(k, ref)
        assert jnp.array_equal(k, jnp.swapaxes(jnp.swapaxes(k, 0, 1), 2, 3))
    _close(nk.ntk(model, x, trace=True), jnp.trace(ref, 0, 2, 3))


def test_float32_structured_and_jacobian():
    model = eqx.nn.MLP(4, 2, 16, 2, activation=jax.nn.relu, dtype=jnp.float32, key=_key(16))
    x = jax.random.normal(_key(17), (9, 4), dtype=jnp.float32)
    ref = ntk_reference(model, x)
    for impl in ("structured", "jacobian"):
        k = nk.ntk(model, x, implementation=impl, block_size=4)
        assert k.dtype == jnp.float32
        _close(k, ref, rtol=1e-5)  # float32: ~100 ulp after summing a few hundred products


def test_ntk_vp_and_operator_are_matrix_free_products():
    model = MODELS["multi_output"][0]()
    x1 = jax.random.normal(_key(18), (9, 4))
    x2 = jax.random.normal(_key(19), (6, 4))
    v = jax.random.normal(_key(20), (6, 3))
    expect = jnp.einsum("ijab,jb->ia", ntk_reference(model, x1, x2), v)
    _close(nk.ntk_vp(model, x1, v, x2), expect)
    _close(nk.ntk_vp(model, x1, v, x2, block_size=4), expect)
    w = jax.random.normal(_key(21), (9, 3))
    op = nk.ntk_operator(model, x1, block_size=2)
    theta = ntk_reference(model, x1).transpose(0, 2, 1, 3).reshape(27, 27)
    _close(op.mv(w.reshape(-1)), theta @ w.reshape(-1))
    # A CG solve on the (regularised) operator agrees with a dense solve.
    reg = op + 1e-1 * lx.IdentityLinearOperator(op.in_structure())
    reg = lx.TaggedLinearOperator(reg, lx.positive_semidefinite_tag)
    sol = lx.linear_solve(reg, w.reshape(-1), lx.CG(rtol=1e-12, atol=1e-12)).value
    _close(sol, jnp.linalg.solve(theta + 1e-1 * jnp.eye(27), w.reshape(-1)), rtol=1e-8)


def test_four_simulated_devices_equal_one_device():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, equinox as eqx
        jax.config.update("jax_enable_x64", True)
        import ntkode as nk
        assert len(jax.devices()) == 4
        model = eqx.nn.MLP(4, 2, 8, 2, key=jax.random.key(0))
        x1 = jax.random.normal(jax.random.key(1), (11, 4))
        x2 = jax.random.normal(jax.random.key(2), (6, 4))
        for impl, block in (("structured", None), ("jacobian", 2)):
            one = nk.ntk(model, x1, x2, implementation=impl, block_size=block)
            four = nk.ntk(model, x1, x2, implementation=impl, block_size=block,
                          devices=jax.devices())
            assert len(four.sharding.device_set) == 4  # rows really were spread out
            err = float(jnp.max(jnp.abs(one - four)))
            assert err <= 1e-12 * float(jnp.max(jnp.abs(one))), (impl, block, err)
        k = nk.ntk(model, x1, devices=jax.devices(), block_size=2)
        assert k.shape == (11, 11, 2, 2)
        print("ok", len(jax.devices()))
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok 4" in out.stdout


def test_eager_calls_reuse_compiled_kernels_and_see_new_weights():
    # Repeated eager calls with the same model object take the identity fast path; a model of
    # the same structure with other weights, or one under jit, must still get its own kernel.
    import gc

    from ntkode._ntk import _dispatch

    x = jax.random.normal(_key(0), (5, 3))
    a = eqx.nn.MLP(3, 2, 6, 1, activation=jnp.tanh, key=_key(1))
    want_a = ntk_reference(a, x)
    for _ in range(3):
        np.testing.assert_allclose(nk.ntk(a, x), want_a, rtol=RTOL64, atol=RTOL64)
    hits = [k for k, v in _dispatch._BY_ID.items() if v[0]() is a]
    assert hits, "a repeated eager call should remember the model by identity"
    b = eqx.tree_at(lambda m: m.layers[0].weight, a, 2.0 * a.layers[0].weight)
    for _ in range(3):
        np.testing.assert_allclose(nk.ntk(b, x), ntk_reference(b, x), rtol=RTOL64, atol=RTOL64)
    assert not np.allclose(nk.ntk(b, x), want_a)
    jitted = eqx.filter_jit(lambda m, x: nk.ntk(m, x))
    np.testing.assert_allclose(jitted(a, x), want_a, rtol=RTOL64, atol=RTOL64)
    assert not any(
        isinstance(leaf, jax.core.Tracer) for v in _dispatch._BY_ID.values() for leaf in v[1]
    )
    del a, jitted
    gc.collect()
    # A collected model's entry goes with it (its weights are not kept alive).
    assert not any(k in _dispatch._BY_ID for k in hits)


def test_bad_inputs_are_clear_errors():
    model = eqx.nn.MLP(4, 1, 8, 1, key=_key(22))
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="x1"):
        nk.ntk(model, jnp.ones((3, 5)))  # feature shape does not match the model
    with pytest.raises(ValueError, match="feature shapes"):
        nk.ntk(model, x, jnp.ones((3, 5)))
    with pytest.raises(TypeError, match="x1"):
        nk.ntk(model, {"a": x})  # a pytree of inputs, not an array
    with pytest.raises(TypeError, match="x2"):
        nk.ntk(model, x, [["a", "b", "c", "d"]])  # non-numeric leaves
    with pytest.raises(ValueError, match="floating-point arrays"):
        nk.ntk(eqx.nn.Lambda(jnp.sin), x)
    with pytest.raises(TypeError, match="scalar leaves"):  # weights as a list of floats
        nk.ntk(ListWeights([0.5, -1.0, 2.0, 0.1]), x)
    with pytest.raises(ValueError, match="Unknown `implementation`"):
        nk.ntk(model, x, implementation="fastest")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="block_size"):
            nk.ntk(model, x, block_size=bad)
    with pytest.raises(TypeError, match="block_size"):
        nk.ntk(model, x, block_size=2.5)
    with pytest.raises(ValueError, match="reference"):
        nk.ntk(model, x, implementation="reference", block_size=2)
    with pytest.raises(ValueError, match="`v`"):
        nk.ntk_vp(model, x, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="block_size"):
        nk.ntk_vp(model, x, jnp.ones((3, 1)), block_size=0)
    with pytest.raises(TypeError, match="devices"):
        nk.ntk(model, x, devices=["cpu"])
    assert np.isfinite(np.asarray(nk.ntk(model, x))).all()
