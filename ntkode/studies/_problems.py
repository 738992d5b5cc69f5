"""The reference problems of the studies (**sine** and its variants), built in one call."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core._data import Dataset
from .._core._gradient_flow import GradientFlowProblem
from ..datasets import sine

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}


class SoftplusBeta(eqx.Module):
    r"""The activations $\mathrm{softplus}(\beta x)/\beta$, which tend to ReLU as $\beta\to\infty$.

    The derivative is the sigmoid gate $\sigma(\beta x)$: $\beta$ sets how sharply a unit
    switches on, and $\operatorname{softplus}(\beta x)/\beta - \operatorname{relu}(x) \in
    (0, \log 2/\beta]$. With `centred=True` the activation is shifted by $-\log 2/\beta$ to pass
    through zero like ReLU: the same gates, but no large mean activation. That matters for
    stiffness: at β = 1 on **sine** the mean activation puts a constant mode of
    $\lambda_{\max}(\Theta)/n \approx 300$ into the NTK (ReLU: 14), and an explicit solver's steps
    shrink accordingly; centred, it is about 2. The shift can be absorbed by the next layer's
    bias, so both span the same functions. `beta=math.inf` is ReLU exactly.

    In [`ntkode.sine_problem`][]: `activation="softplus_beta:16"`, `"softplus_beta:16:centred"`,
    `"softplus_beta:inf"`.
    """

    beta: float = eqx.field(static=True)
    centred: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not self.beta > 0:  # also refuses NaN
            raise ValueError(f"`beta` must be positive (math.inf for ReLU), got {self.beta!r}.")

    def __call__(self, x):
        if math.isinf(self.beta):
            return jax.nn.relu(x)
        y = jax.nn.softplus(self.beta * x) / self.beta
        return y - math.log(2.0) / self.beta if self.centred else y


_FAMILY = "softplus_beta:"


def _softplus_beta(name: str) -> SoftplusBeta:
    parts = name[len(_FAMILY) :].split(":")
    try:
        beta = float(parts[0])
    except ValueError:
        beta = math.nan
    if not beta > 0 or len(parts) > 2 or parts[1:] not in ([], ["centred"]):
        raise ValueError(
            f"`activation` {name!r}: write '{_FAMILY}<beta>' or '{_FAMILY}<beta>:centred' with a "
            "positive beta or 'inf' (ReLU), e.g. 'softplus_beta:16'."
        )
    return SoftplusBeta(beta, centred=parts[1:] == ["centred"])


def _activation(name):
    if callable(name):
        return name
    if isinstance(name, str) and name.startswith(_FAMILY):
        return _softplus_beta(name)
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Unknown `activation` {name!r}; choose one of {sorted(ACTIVATIONS)} or "
            f"'{_FAMILY}<beta>[:centred]' (softplus(beta·x)/beta)."
        )
    return ACTIVATIONS[name]


def sine_problem(
    *,
    width: int = 512,
    depth: int = 2,
    n_train: int = 256,
    n_test: int = 256,
    dim: int = 8,
    t_end: float = 50.0,
    learning_rate: float = 1.0,
    activation="relu",
    seed: int = 0,
    dtype=None,
) -> GradientFlowProblem:
    """The **sine** reference problem: an MLP `dim → width^depth → 1` on `y = sin(Σx)`.

    Equinox's default (standard) initialisation, mean-MSE, `η = 1`, `t ∈ [0, t_end]`.
    `activation="softplus"` gives the smooth variant (**sine-softplus**), whose kernels do not
    chatter the way ReLU's do; `activation="softplus_beta:<β>"` the family softplus(βx)/β
    between the two ([`ntkode.studies.SoftplusBeta`][]; β = 1 is softplus, β = inf is ReLU;
    `"softplus_beta:<β>:centred"` shifts it through zero). Any callable is also accepted.

    **Returns:** a [`ntkode.GradientFlowProblem`][] (its `model` and `data` are fields).
    """
    for name, value in (("width", width), ("depth", depth)):
        if int(value) < 1:
            raise ValueError(f"`{name}` must be at least 1, got {value}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    data: Dataset = sine(n_train, n_test, dim, key=jax.random.key(seed), dtype=dtype)
    model = eqx.nn.MLP(
        dim,
        1,
        width,
        depth,
        activation=_activation(activation),
        key=jax.random.key(seed + 1),
        dtype=dtype,
    )
    return GradientFlowProblem(model, data, tspan=(0.0, t_end), learning_rate=learning_rate)
