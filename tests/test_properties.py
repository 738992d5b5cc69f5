"""Property-based checks (hypothesis) of small pure pieces: interpolation weights, kernel
flattening, schedule clamping. Each property is a law the code must obey for every input."""

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ntkode as nk
from ntkode import schedules as S
from ntkode._core._kernel_flow import flatten_kernel

pytestmark = pytest.mark.strict_dtypes

INTERPOLATIONS = [
    S.Linear(),
    S.Smoothstep(order=1),
    S.Smoothstep(order=2),
    S.PiecewiseConstant("nearest"),
    S.PiecewiseConstant("left"),
    S.PiecewiseConstant("average", 3),
]


@st.composite
def nodes_and_value(draw):
    """Strictly increasing nodes (1 to 9 of them) and a value, inside or outside their range."""
    g = draw(st.integers(1, 9))
    gaps = draw(hnp.arrays(np.float64, g, elements=st.floats(1e-3, 10.0)))
    start = draw(st.floats(-50.0, 50.0))
    nodes = start + np.cumsum(gaps)
    lo, hi = nodes[0] - 5.0, nodes[-1] + 5.0
    s = draw(st.floats(lo, hi))
    return jnp.asarray(nodes), jnp.asarray(s)


@pytest.mark.parametrize("interp", INTERPOLATIONS, ids=lambda i: repr(i))
@settings(max_examples=60, deadline=None)
@given(case=nodes_and_value())
def test_weights_are_convex_local_and_clamped(interp, case):
    nodes, s = case
    w = np.asarray(interp.weights(s, nodes))
    # Convex: non-negative, summing to one (the certificate relies on this).
    assert np.all(w >= 0.0)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=0, atol=1e-12)
    # Local: at most `support` kernels are active.
    assert np.count_nonzero(w) <= interp.support
    # Clamped: strictly outside the node range, the end kernel alone.
    if float(s) < float(nodes[0]):
        assert w[0] == pytest.approx(1.0)
    if float(s) > float(nodes[-1]):
        assert w[-1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "interp", [S.Linear(), S.Smoothstep(1), S.Smoothstep(2)], ids=lambda i: repr(i)
)
@settings(max_examples=40, deadline=None)
@given(case=nodes_and_value(), pick=st.integers(0, 8))
def test_continuous_weights_reproduce_node_kernels(interp, case, pick):
    nodes, _ = case
    g = pick % nodes.shape[0]
    w = np.asarray(interp.weights(nodes[g], nodes))
    expected = np.zeros(nodes.shape[0])
    expected[g] = 1.0
    np.testing.assert_allclose(w, expected, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(n1=st.integers(1, 4), n2=st.integers(1, 4), k=st.integers(1, 3), seed=st.integers(0, 99))
def test_flatten_kernel_layouts_agree(n1, n2, k, seed):
    rng = np.random.default_rng(seed)
    blocks = rng.normal(size=(n1, n2, k, k))
    flat = np.asarray(flatten_kernel(blocks, n1, n2, k, "K"))
    # Example-major: row i·k + a, column j·k + b holds Θ(x_i, x_j)_{ab}.
    for i, j, a, b in np.ndindex(n1, n2, k, k):
        assert flat[i * k + a, j * k + b] == blocks[i, j, a, b]
    # Flat input is returned as it is; a shared (n1, n2) kernel means Θ ⊗ I_k.
    np.testing.assert_array_equal(np.asarray(flatten_kernel(flat, n1, n2, k, "K")), flat)
    shared = blocks[:, :, 0, 0]
    np.testing.assert_array_equal(
        np.asarray(flatten_kernel(shared, n1, n2, k, "K")), np.kron(shared, np.eye(k))
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    shift=st.floats(-3.0, 3.0),
    seed=st.integers(0, 99),
)
def test_loss_and_residual_schedules_invert(n, shift, seed):
    # residual_sq(σ(u)) = ‖u − Y‖²: the exact solver's crossing levels rest on this.
    rng = np.random.default_rng(seed)
    y = jnp.asarray(rng.normal(size=(n, 1)))
    u = y + jnp.exp(shift) * jnp.asarray(rng.normal(size=(n, 1)))
    r2 = float(jnp.sum((u - y) ** 2))
    for sched in (S.LossLevel(), S.LossLevel(log=False), S.ResidualNorm(), S.ResidualNorm(False)):
        s = sched(0.0, u, y, nk.losses.mse)
        assert float(sched.residual_sq(s, n)) == pytest.approx(r2, rel=1e-10)


def test_strict_promotion_is_on_in_this_module():
    # The marker above must make implicit float32/float64 promotion an error here.
    with pytest.raises(Exception, match="promot"):
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.float64)
