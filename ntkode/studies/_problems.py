"""The reference problems of the studies, built in one call: **sine** (regression, MLP) and
**digits** (classification with cross-entropy, CNN or MLP)."""

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


#: The bundled digits: 1,797 images; the fixed test split holds the 360 left after 1,437.
DIGITS_TOTAL, DIGITS_TRAIN = 1797, 1437


class DigitsCNN(eqx.Module):
    """A small CNN for 8×8 digits: two 3×3 convolutions (ReLU), then a dense read-out.

    `(1, 8, 8)` images → `channels` feature maps → `channels` maps at stride 2 (4×4) →
    `k = 10` class scores. Equinox's default initialisation; its convolutions and the dense
    layer are tapped by the structured NTK engine (`ntkode/_ntk/_structured.py`).
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, channels: int = 8, n_classes: int = 10, *, key, dtype=None):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, channels, 3, padding=1, key=k1, dtype=dtype)
        self.conv2 = eqx.nn.Conv2d(channels, channels, 3, stride=2, padding=1, key=k2, dtype=dtype)
        self.head = eqx.nn.Linear(channels * 16, n_classes, key=k3, dtype=dtype)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.reshape(-1))


def digits_data(*, n_train: int = DIGITS_TRAIN, seed: int = 0, images: bool = True, dtype=None):
    """scikit-learn's bundled digits, split by `seed`, pixels standardised, one-hot targets.

    A seeded permutation of the 1,797 examples fixes a test split of 360; `n_train` (at most
    1,437) training examples are the first of the remaining ones, so smaller training sets are
    subsets of larger ones and every `n_train` is tested on the same 360 images. Pixels are
    scaled to `[0, 1]` (÷16) and centred by the training mean. `images=True` gives inputs
    `(n, 1, 8, 8)` (for a CNN), otherwise `(n, 64)`. Targets are one-hot rows `(n, 10)`.
    """
    if int(n_train) != n_train or not 1 <= int(n_train) <= DIGITS_TRAIN:
        raise ValueError(
            f"`n_train` must be an integer between 1 and {DIGITS_TRAIN} (the digits data set "
            f"has {DIGITS_TOTAL} images, {DIGITS_TOTAL - DIGITS_TRAIN} of them held out for "
            f"testing), got {n_train}."
        )
    try:  # heavy: imported only when the data set is asked for
        import sklearn.datasets
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "The digits problem reads scikit-learn's bundled data set: install it with "
            '`pip install "ntkode[studies]"` (or `pip install scikit-learn`).'
        ) from err
    import numpy as np

    bunch = sklearn.datasets.load_digits()
    x = np.asarray(bunch.data, np.float64) / 16.0
    labels = np.asarray(bunch.target)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[DIGITS_TRAIN:], order[: int(n_train)]
    x = x - x[train].mean(0)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    onehot = np.eye(10)[labels]
    dtype = jnp.result_type(float) if dtype is None else dtype
    c = lambda a: np.asarray(a).astype(dtype)
    return Dataset(c(x[train]), c(onehot[train]), c(x[test]), c(onehot[test]), name="digits")


def digits_problem(
    *,
    model: str = "cnn",
    n_train: int = DIGITS_TRAIN,
    channels: int = 8,
    width: int = 256,
    depth: int = 1,
    t_end: float = 20.0,
    learning_rate: float = 1.0,
    seed: int = 0,
    dtype=None,
) -> GradientFlowProblem:
    """The **digits** reference problem: a classifier of scikit-learn's 8×8 handwritten digits.

    Softmax cross-entropy on one-hot targets (`k = 10` outputs), full-batch gradient flow
    with `η = learning_rate` on `t ∈ [0, t_end]`, the data of [`digits_data`][] (train/test
    split fixed by `seed`; 360 test images).

    **Arguments:**

    - `model`: `"cnn"` (a [`DigitsCNN`][] with `channels` feature maps) or `"mlp"` (an
      `eqx.nn.MLP` `64 → width^depth → 10`, ReLU).
    - `n_train`: training examples, at most 1,437.
    - `seed`: seeds the split and the initialisation.
    - `dtype`: floating dtype (default: JAX's default float).

    **Returns:** a [`ntkode.GradientFlowProblem`][] with `loss = cross_entropy`.
    """
    from .._core._losses import cross_entropy

    if model not in ("cnn", "mlp"):
        raise ValueError(f"Unknown `model` {model!r} for digits; choose 'cnn' or 'mlp'.")
    for name, value in (("channels", channels), ("width", width), ("depth", depth)):
        if int(value) < 1:
            raise ValueError(f"`{name}` must be at least 1, got {value}.")
    if not t_end > 0:
        raise ValueError(f"`t_end` must be positive, got {t_end}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    data = digits_data(n_train=n_train, seed=seed, images=model == "cnn", dtype=dtype)
    key = jax.random.key(seed + 1)
    if model == "cnn":
        net = DigitsCNN(channels, 10, key=key, dtype=dtype)
    else:
        net = eqx.nn.MLP(64, 10, width, depth, activation=jax.nn.relu, key=key, dtype=dtype)
    return GradientFlowProblem(
        net, data, loss=cross_entropy, tspan=(0.0, t_end), learning_rate=learning_rate
    )
