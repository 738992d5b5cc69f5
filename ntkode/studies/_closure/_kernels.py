r"""Kernel machines of the closure network: NTK at initialisation, NTK after training, path kernel.

Every machine is kernel ridge regression started from the network at initialisation, as in
Domingos' theorem ($b = f(\theta_0, x)$),

$$\hat f(x) = f(\theta_0, x) + K(x, X)\,(K(X, X) + \lambda I)^{-1}\,(Y_\pm - f(\theta_0, X)),$$

with targets $Y_\pm = \pm 1$ per pixel (inside/outside) and "inside" where $\hat f > 0$,
as for the network's logits. The ridge $\lambda$ is chosen, from a grid relative to the mean
diagonal of $K$, by the pooled IoU of the *leave-one-out* predictions on the training
images, which kernel ridge regression gives in closed form: with
$G = (K + \lambda I)^{-1}$ and $\alpha = G\,(Y_\pm - f_0)$, leaving image $i$ out moves its
prediction to $Y_{\pm,i} - \alpha_i / G_{ii}$ (a Schur complement, true for any square $K$,
so for the non-symmetric path kernel too). The machines thus get their best ridge without
seeing a test image.

**Kernels are traced over pixels**: $K(x, x') = \sum_p \nabla_\theta f_p(x) \cdot
\nabla_\theta f_p(x')$, one image-to-image kernel shared by every pixel (what
[`ntkode.ntk`][]`(model, x1, x2, trace=True)` computes), summed here over blocks of pixels
(`traced_ntk`: one backward pass per pixel and image, each computed once, in bounded
memory). The full NTK of an `m × m` map has `m²×m²` blocks per pair of images (65,536
numbers per pair at 16×16), out of reach for a thousand images; the traced kernel costs
one Jacobian per image and one contraction per pair. What it cannot do is move information
between pixels: a traced machine predicts every held-out map as $f(\theta_0, x)$ plus a
combination of the training maps $Y_{\pm,i} - f(\theta_0, x_i)$, weighted by image
similarity. The network's own
function-space dynamics use the full kernel (Jacot, Gabriel and Hongler 2018), so a traced
machine is a kernel machine *of the network's tangent features*, not the linearised network.
"""

import functools
import resource
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..._core._regression import kernel_regression
from ._train import predict_logits
from ._unet import UNet

#: Relative ridges tried (times the mean diagonal of the training kernel).
RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class Machine(NamedTuple):
    """A kernel machine's predictions and costs.

    **Fields:** `test` (scores `(m, k)`, inside where > 0); `ridge` (the relative ridge
    chosen); `loo_iou` (the leave-one-out pooled IoU on the training images at that ridge);
    `solve_seconds` (ridge selection and solve).
    """

    test: np.ndarray
    ridge: float
    loo_iou: float
    solve_seconds: float


def traced_ntk(
    model: UNet, x: Float[Array, "q 1 m m"], cols: int | np.ndarray, memory_gb: float = 4.0,
    profile: dict[str, float] | None = None,
) -> tuple[Array, float]:  # fmt: skip
    r"""The network's NTK traced over pixels between the images `x` and some of them.

    `cols` is a number `c` (the first `c` images) or an index array of distinct images.
    Returns the kernel `(q, c)` and the seconds it took.

    The trace is a sum over pixels, so it is taken **in blocks of pixels**:
    $K = \sum_B J_B(X)\,J_B(X_{\text{cols}})^\top$, where $J_B(x)$ is the `(|B| P)`
    flattened Jacobian of the logits at the pixels of block $B$ (one backward pass per
    pixel, `jax.jacrev`, vmapped over a few images at a time). Every pixel's backward
    pass of every image is computed exactly once, whatever the memory; the block is as
    many pixels as fit in `memory_gb` (the `(q, |B| P)` features, twice while they are
    assembled). Per block the contraction is a few large GEMMs with inner dimension
    `|B| P` (the column images are put first, so the features of the columns are the
    first rows, with no copy), and the symmetric column-by-column part is computed once,
    in its upper block triangle (`_block_gram`).

    Cost: `q m²` backward passes and `2 q c m² P` flops (less the triangle). The passes
    dominate for small networks at 32×32: they run at a few GFLOP/s on CPU (convolutions
    with a few channels), while the GEMMs run at the machine's `jnp.dot` rate. A dict
    passed as `profile` receives where the time went: `backward_s` (the Jacobians),
    `contract_s` (the GEMMs), `backward_passes`, `gemm_flops`, `blocks`, `block_pixels`.
    """
    t = time.perf_counter()
    q, m = int(x.shape[0]), int(x.shape[-1])
    cols = np.arange(int(cols)) if np.ndim(cols) == 0 else np.asarray(cols, int)
    c = len(cols)
    # Columns first, then the other rows; rows are put back in their order at the end.
    rest = np.setdiff1d(np.arange(q), cols)
    perm = np.concatenate([cols, rest])
    if len(perm) != q or len(np.unique(cols)) != c:
        raise ValueError(f"`cols` must be distinct indices of the {q} images, got {cols}.")
    xp = x[perm]
    params, static = eqx.partition(model, eqx.is_inexact_array)
    size = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    per_pixel = 2 * q * size * jnp.dtype(x.dtype).itemsize
    block = _divisor_at_most(m * m, max(1, int(memory_gb * 1e9 // per_pixel)))
    chunk = max(1, _BACKWARD_PASSES // block)
    tiles = max(1, min(_TILES, c))
    kernel = jnp.zeros((q, c), x.dtype)
    backward_s = contract_s = 0.0
    for start in range(0, m * m, block):
        t_block = time.perf_counter()
        pix = jnp.arange(start, start + block)
        feats = jnp.concatenate(
            [_pixel_jacobians(params, static, xp[i : i + chunk], pix) for i in range(0, q, chunk)]
        ).block_until_ready()
        t_gemm = time.perf_counter()
        kernel = _accumulate(kernel, feats, c, tiles).block_until_ready()
        backward_s += t_gemm - t_block
        contract_s += time.perf_counter() - t_gemm
        del feats
    kernel = kernel[np.argsort(perm)].block_until_ready()
    if profile is not None:
        top = sum((hi * (hi - lo)) for lo, hi in _tile_edges(c, tiles))
        profile.update(
            backward_s=backward_s, contract_s=contract_s, backward_passes=q * m * m,
            gemm_flops=2.0 * (top + (q - c) * c) * m * m * size, blocks=m * m // block,
            block_pixels=block,
        )  # fmt: skip
    return kernel, time.perf_counter() - t


def _tile_edges(c: int, tiles: int) -> list[tuple[int, int]]:
    edges = [round(c * j / tiles) for j in range(tiles + 1)]
    return list(zip(edges[:-1], edges[1:]))


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


#: Backward passes (images × pixels) vmapped together in one call. Small calls keep the
#: convolutions' operands in cache: 128 ran 1.3× faster than 512 and 1.5× faster than 2,048
#: (4-channel U-Net, 32×32, `benchmarks/closure.py`'s machine).
_BACKWARD_PASSES = 128

#: Column tiles of the symmetric column-by-column block (upper triangle of tiles only).
_TILES = 4


def _divisor_at_most(total: int, limit: int) -> int:
    return max(d for d in range(1, min(total, limit) + 1) if total % d == 0)


@eqx.filter_jit
def _pixel_jacobians(params, static, x, pix):
    """`(c, |pix| P)`: per image, the logits' gradients at pixels `pix`, flattened."""

    def one(xi):
        jac = jax.jacrev(lambda p: eqx.combine(p, static)(xi).reshape(-1)[pix])(params)
        return jnp.concatenate([a.reshape(pix.shape[0], -1) for a in jax.tree.leaves(jac)], 1)

    return jax.vmap(one)(x).reshape(x.shape[0], -1)


@functools.partial(jax.jit, static_argnums=(2, 3), donate_argnums=0)
def _accumulate(kernel, feats, c, tiles):
    return kernel + _block_gram(feats, c, tiles)


def _block_gram(f: Array, c: int, tiles: int) -> Array:
    """`f @ f[:c].T` `(q, c)`, computing the symmetric `(c, c)` top once.

    The columns are cut into `tiles` contiguous tiles; for tile `j` the GEMMs give the rows
    up to the tile's end (`f[:hi] @ f[lo:hi].T`) and the rows past the columns
    (`f[c:] @ f[lo:hi].T`); the entries `r > s` of the top not computed come from
    `(s, r)` by symmetry. That saves `(tiles - 1) / (2 tiles)` of the top's flops.
    """
    top = jnp.zeros((c, c), f.dtype)
    for lo, hi in _tile_edges(c, tiles):
        top = top.at[:hi, lo:hi].set(f[:hi] @ f[lo:hi].T)
    r = jnp.arange(c)
    top = jnp.where(r[:, None] <= r[None, :], top, top.T)
    return jnp.concatenate([top, f[c:] @ f[:c].T])


def _pooled(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def loo_residuals(kernel: np.ndarray, residual: np.ndarray, ridge: float) -> np.ndarray:
    """Leave-one-out residuals $\alpha_i / G_{ii}$ of kernel ridge regression, `(n, k)`.

    `kernel` `(n, n)` (any square matrix), `residual` $Y - f_0$ `(n, k)`, `ridge` absolute.
    Row `i` is $Y_i$ minus the prediction at $x_i$ of the machine fitted without image `i`.
    """
    k = np.asarray(kernel, np.float64)
    g = np.linalg.inv(k + ridge * np.eye(k.shape[0]))
    return (g @ np.asarray(residual, np.float64)) / np.diag(g)[:, None]


def loo_ridge(kernel: np.ndarray, residual: np.ndarray, truth: np.ndarray, ridges=RIDGES):
    r"""The relative ridge with the best leave-one-out pooled IoU, and that IoU.

    `kernel` `(n, n)`, `residual` $Y_\pm - f_0$ `(n, k)`, `truth` boolean `(n, k)`; ridges
    relative to the mean diagonal of `kernel`.
    """
    y = np.where(truth, 1.0, -1.0)
    scale = float(np.mean(np.diag(np.asarray(kernel, np.float64))))
    best = (-1.0, ridges[0])
    for rho in ridges:
        try:
            loo = y - loo_residuals(kernel, residual, rho * scale)
        except np.linalg.LinAlgError:
            continue
        score = _pooled(loo > 0, truth)
        if score > best[0]:
            best = (score, rho)
    return best[1], best[0]


def kernel_machine(
    k_train: Array, k_test: Array, y_train: np.ndarray, f0_train: np.ndarray,
    f0_test: np.ndarray, *, symmetric: bool = True, ridges=RIDGES,
) -> Machine:  # fmt: skip
    """Kernel ridge regression from the initial network, ridge by leave-one-out IoU.

    **Arguments:** traced kernels `k_train` `(n, n)` and `k_test` `(m, n)`; boolean
    targets `y_train` `(n, k)`; the initial network's logits `f0_train` `(n, k)` and
    `f0_test` `(m, k)`; `symmetric=False` for the path kernel.
    """
    t = time.perf_counter()
    truth = np.asarray(y_train, bool)
    target = np.where(truth, 1.0, -1.0).astype(np.float32)
    rho, loo = loo_ridge(np.asarray(k_train), target - np.asarray(f0_train), truth, ridges)
    # The selection runs in float64; in float32 the chosen ridge can leave the solve
    # singular, in which case the next larger ridge is used (and reported).
    for rho in [r for r in ridges if r >= rho]:
        try:
            out = kernel_regression(
                k_train, k_test, target, u0_train=f0_train, u0_test=f0_test, ridge=rho,
                relative_ridge=True, symmetric=symmetric,
            )  # fmt: skip
            break
        except ValueError:
            if rho == ridges[-1]:
                raise
    test = np.asarray(out.test)
    return Machine(test, rho, loo, time.perf_counter() - t)


def ntk_machines(
    init: UNet, trained: UNet, x_train: Array, y_train: np.ndarray, x_test: Array,
    *, memory_gb: float = 4.0, init_kernel: tuple[Array, Array] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The NTK machines at initialisation and after training, with their timings.

    `init_kernel` = `(K(X, X), K(X_test, X))` of `init`, if already computed (the kernel at
    initialisation does not depend on the training run, so a learning curve slices one).
    """
    n = x_train.shape[0]
    truth = np.asarray(y_train, bool).reshape(n, -1)
    f0_train = predict_logits(init, x_train).reshape(n, -1)
    f0_test = predict_logits(init, x_test).reshape(x_test.shape[0], -1)
    out: dict[str, Any] = {}
    for name, model in (("ntk_init", init), ("ntk_final", trained)):
        if name == "ntk_init" and init_kernel is not None:
            kxx, ksx, seconds = init_kernel[0], init_kernel[1], 0.0
        else:
            k, seconds = traced_ntk(model, jnp.concatenate([x_train, x_test]), n, memory_gb)
            kxx, ksx = k[:n], k[n:]
        machine = kernel_machine(kxx, ksx, truth, f0_train, f0_test)
        out[name] = {"machine": machine, "ntk_seconds": seconds}
    return out
