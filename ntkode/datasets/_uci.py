"""The **uci-small** data sets that scikit-learn ships, ready for kernel studies.

Breast cancer, wine, iris, diabetes and digits are bundled with scikit-learn (no download).
Features are standardised with the *training* split's mean and standard deviation;
classification targets are ±1 (two classes: one column; more classes: one-vs-rest columns,
`+1` for the class and `-1` otherwise), regression targets are standardised.
"""

import numpy as np

from .._core._data import Dataset

_LOADERS = {
    "breast_cancer": ("load_breast_cancer", "classification"),
    "wine": ("load_wine", "classification"),
    "iris": ("load_iris", "classification"),
    "diabetes": ("load_diabetes", "regression"),
    "digits": ("load_digits", "classification"),
}
UCI_NAMES = tuple(_LOADERS)


def sign_targets(labels, name: str = "labels") -> np.ndarray:
    """Class labels `(n,)` as ±1 targets: `(n, 1)` for two classes, `(n, C)` one-vs-rest.

    **Arguments:** `labels`: class labels (any hashable values); `name`: for the message.

    **Returns:** a float array of ±1.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size < 2:
        raise ValueError(
            f"`{name}` holds a single class ({classes.tolist()}); classification needs at "
            "least two classes (choose other `classes`, or more examples)."
        )
    if classes.size == 2:
        return np.where(labels == classes[1], 1.0, -1.0)[:, None]
    return np.where(labels[:, None] == classes[None, :], 1.0, -1.0)


def uci(
    name: str,
    *,
    test_fraction: float = 0.3,
    max_examples: int | None = None,
    classes=None,
    seed: int = 0,
    dtype=np.float64,
) -> Dataset:
    """One of scikit-learn's bundled data sets, split, standardised, with ±1 targets.

    **Arguments:**

    - `name`: `"breast_cancer"`, `"wine"`, `"iris"`, `"diabetes"` or `"digits"`.
    - `test_fraction`: share of examples held out (a seeded random split).
    - `max_examples`: keep a random subset of this many examples first (e.g. digits).
    - `classes`: keep only these class labels (classification only; at least two).
    - `seed`: seeds the subset and the split.
    - `dtype`: floating dtype of the arrays.

    **Returns:** a [`ntkode.Dataset`][] named `name`; for classification the targets are ±1
    (see `sign_targets`), for regression standardised.
    """
    if name not in _LOADERS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {list(_LOADERS)}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction}.")
    try:  # heavy: imported only when a data set is asked for
        import sklearn.datasets
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "scikit-learn's bundled data sets need scikit-learn: install it with "
            '`pip install "ntkode[studies]"` (or `pip install scikit-learn`).'
        ) from err

    loader, task = _LOADERS[name]
    bunch = getattr(sklearn.datasets, loader)()
    x, target = np.asarray(bunch.data, np.float64), np.asarray(bunch.target)
    rng = np.random.default_rng(seed)
    if classes is not None:
        if task != "classification":
            raise ValueError(f"`classes` applies to classification data sets; {name!r} is not.")
        keep = np.isin(target, np.asarray(classes))
        x, target = x[keep], target[keep]
        sign_targets(target, "the targets of the chosen `classes`")
    if max_examples is not None:
        if int(max_examples) < 4:
            raise ValueError(f"`max_examples` must be at least 4, got {max_examples}.")
        pick = rng.permutation(len(x))[: int(max_examples)]
        x, target = x[pick], target[pick]
    order = rng.permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    test, train = order[:n_test], order[n_test:]
    if task == "classification":
        # One-vs-rest columns over the classes present in the whole (subset) data set.
        y = sign_targets(target, f"the targets of {name!r}")
        sign_targets(target[train], f"the training targets of {name!r}")
    else:
        y = target[:, None].astype(np.float64)
        y = (y - y[train].mean(0)) / y[train].std(0)
    mean, std = x[train].mean(0), x[train].std(0)
    # Constant features (digits' blank border pixels) stay at zero instead of dividing by 0.
    std = np.where(std > 0, std, 1.0)
    x = (x - mean) / std
    c = lambda a: a.astype(dtype)
    return Dataset(c(x[train]), c(y[train]), c(x[test]), c(y[test]), name=name)


def breast_cancer(**kwargs) -> Dataset:
    """Wisconsin breast cancer (569 × 30, two classes): `uci("breast_cancer", ...)`."""
    return uci("breast_cancer", **kwargs)


def wine(**kwargs) -> Dataset:
    """Wine (178 × 13, three classes, one-vs-rest): `uci("wine", ...)`."""
    return uci("wine", **kwargs)


def iris(**kwargs) -> Dataset:
    """Iris (150 × 4, three classes, one-vs-rest): `uci("iris", ...)`."""
    return uci("iris", **kwargs)


def diabetes(**kwargs) -> Dataset:
    """Diabetes progression (442 × 10, regression, standardised target): `uci("diabetes", ...)`."""
    return uci("diabetes", **kwargs)


def digits(*, max_examples: int | None = 600, **kwargs) -> Dataset:
    """Handwritten digits (8×8 = 64 features, ten classes one-vs-rest), by default a random
    subset of 600 of the 1,797 examples: `uci("digits", ...)`."""
    return uci("digits", max_examples=max_examples, **kwargs)
