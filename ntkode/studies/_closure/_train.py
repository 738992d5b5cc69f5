r"""Minibatch training of the closure network, resumable, with checkpoints every epoch.

Binary cross-entropy on pixel logits, minibatches drawn without replacement (a fresh
permutation each epoch; the last incomplete batch of an epoch is left out), each image
moved by a random symmetry of the square (the eight rotations and flips: the inside of a
curve moves with it), an [`AbstractOptimiser`][] on a warm-up-then-cosine schedule.

**Resuming.** The permutation of epoch `e` is a function of `(seed, e)` and the
augmentation of step `s` of `fold_in(key(seed), s)`, so a run resumed from a checkpoint
takes exactly the steps the uninterrupted run would have taken (the tests check that the
weights agree bit for bit). A checkpoint (`checkpoint.eqx`, weights and optimiser state by
`eqx.tree_serialise_leaves`, and `checkpoint.json`, where the run stands and every setting
including a hash of the training data) is written after every epoch and when the run is
interrupted (Ctrl-C: the step in flight finishes, the checkpoint is written, and
`KeyboardInterrupt` propagates). A rerun with the same settings resumes where it stopped and
says so; with different settings it starts afresh and says which setting changed.
"""

import hashlib
import os
import sys
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from ..._core._records import read_json, write_json
from ._optimisers import AbstractOptimiser
from ._unet import UNet


class Trained(NamedTuple):
    """A training run's outcome.

    **Fields:** `model` (the trained network); `history` (one dict per epoch: `epoch`,
    `loss` (mean BCE), `train_iou` (pooled IoU of the augmented minibatches, before each
    step), `val_iou` (pooled IoU on the validation images, if any), `seconds`); `resumed`
    (the epoch and step it resumed from, or `None`); `steps`; `seconds` (this call's
    training time).
    """

    model: UNet
    history: list[dict[str, Any]]
    resumed: tuple[int, int] | None
    steps: int
    seconds: float


def _symmetry(x: Array, y: Array, key: Array) -> tuple[Array, Array]:
    """The same random rotation by a multiple of 90° and flip of an image and its labels."""
    k1, k2 = jax.random.split(key)
    turns = jax.random.randint(k1, (), 0, 4)
    flip = jax.random.bernoulli(k2)

    def move(a):
        a = jax.lax.switch(
            turns, [lambda b, k=k: jnp.rot90(b, k, axes=(-2, -1)) for k in range(4)], a
        )
        return jnp.where(flip, a[..., ::-1], a)

    return move(x), move(y)


def bce(logits: Array, labels: Array) -> Array:
    """Mean binary cross-entropy of pixel `logits` against 0/1 `labels`."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


@eqx.filter_jit
def _step(optimiser, total, params, opt_state, static, x, y, index, key, augment):
    # Built inside: the transformation's closures are new objects on every `build`, and as
    # static arguments they would defeat the compilation cache.
    transform = optimiser.build(total)
    xb, yb = x[index], y[index]
    if augment:
        xb, yb = jax.vmap(_symmetry)(xb, yb, jax.random.split(key, index.shape[0]))

    def loss(p):
        logits = jax.vmap(eqx.combine(p, static))(xb)
        return bce(logits, yb), logits

    fast = optimiser.fast(params)
    (value, logits), grads = eqx.filter_value_and_grad(loss, has_aux=True)(fast)
    updates, opt_state = transform.update(grads, opt_state, params)
    pred, truth = logits > 0, yb > 0.5
    counts = jnp.stack([jnp.sum(pred & truth), jnp.sum(pred | truth)])
    return optax.apply_updates(params, updates), opt_state, value, counts


@eqx.filter_jit
def _logits(model: UNet, x: Array) -> Array:
    return jax.vmap(model)(x)


def predict_logits(model: UNet, x: Float[Array, "n 1 m m"], chunk: int = 256) -> np.ndarray:
    """Per-pixel logits `(n, m, m)` of `model`, `chunk` images at a time."""
    parts = [np.asarray(_logits(model, x[i : i + chunk])) for i in range(0, x.shape[0], chunk)]
    return np.concatenate(parts) if parts else np.zeros((0,) + x.shape[2:], np.float32)


def _pooled_iou(logits: np.ndarray, labels: np.ndarray) -> float:
    pred, truth = logits > 0, labels > 0.5
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def data_hash(*arrays: np.ndarray) -> str:
    """A short SHA-256 of the arrays' bytes: two runs on the same data share it."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _changed(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diff = [k for k in keys if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff[:3])


class _Bar:
    """A tqdm bar on a terminal; one printed line per epoch elsewhere (or nothing)."""

    def __init__(self, progress: bool, total: int, initial: int):
        self.bar = None
        self.say = print if progress else (lambda *a, **k: None)
        if progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="training", unit="step")

    def step(self, loss: float, running_iou: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", iou=f"{running_iou:.3f}", refresh=False)
            self.bar.update(1)

    def epoch(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            self.say(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    model: UNet,
    x: Float[Array, "n 1 m m"],
    y: Float[Array, "n m m"],
    *,
    optimiser: AbstractOptimiser,
    epochs: int,
    batch_size: int = 32,
    augment: bool = True,
    seed: int = 0,
    validation: tuple[Array, np.ndarray] | None = None,
    folder: str | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> Trained:
    """Train `model` on images `x` and inside masks `y` by minibatch optimisation.

    **Arguments:**

    - `model`: the [`UNet`][] at initialisation.
    - `x`, `y`: images `(n, 1, m, m)` (1 on curve pixels) and 0/1 targets `(n, m, m)`.
    - `optimiser`: an [`AbstractOptimiser`][] ([`Adam`][], [`Ranger`][]).
    - `epochs`, `batch_size`: passes over the data and images per step.
    - `augment`: move each image by a random symmetry of the square.
    - `seed`: minibatch order and augmentation.
    - `validation`: `(images, masks)` scored (pooled IoU) after every epoch.
    - `folder`: where checkpoints go (and are resumed from); `None`: no checkpoints.
    - `settings`: extra settings that identify the run (recorded, and compared on resume).
    - `progress`: a progress bar with loss and running IoU on a terminal, else one line
      per epoch with its time; `False`: silent.

    **Returns:** a [`Trained`][].
    """
    n = int(x.shape[0])
    epochs, batch_size = int(epochs), int(batch_size)
    if epochs < 1 or batch_size < 1:
        raise ValueError(
            f"`epochs` and `batch_size` must be at least 1, got {epochs} and {batch_size}."
        )
    batch = min(batch_size, n)
    per_epoch = n // batch
    total = epochs * per_epoch
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = optimiser.wrap(params)
    opt_state = optimiser.build(total).init(params)
    run = {
        "model": model.hyperparameters(),
        **optimiser.settings(),
        "epochs": epochs,
        "batch_size": batch,
        "augment": bool(augment),
        "seed": int(seed),
        "data": data_hash(np.asarray(x), np.asarray(y)),
        "init": data_hash(*[np.asarray(v) for v in jax.tree.leaves(params)]),
        **(settings or {}),
    }
    history: list[dict[str, Any]] = []
    start_epoch, start_step, resumed = 0, 0, None
    sums = np.zeros(3)  # loss sum, intersection, union of the epoch in progress
    say = print if progress else (lambda *a, **k: None)
    if folder is not None:
        state = _load_checkpoint(folder, run, (params, opt_state), say)
        if state is not None:
            (params, opt_state), start_epoch, start_step, history, sums = state
            resumed = (start_epoch, start_step)
    key = jax.random.key(int(seed))
    bar = _Bar(progress, total, start_epoch * per_epoch + start_step)
    t_start = time.perf_counter()
    at = [start_epoch, start_step]  # where the run stands: epoch, steps done in it
    try:
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            order = np.random.default_rng([int(seed), epoch]).permutation(n)
            if at[1] == 0:
                sums = np.zeros(3)
            for i in range(at[1], per_epoch):
                index = jnp.asarray(order[i * batch : (i + 1) * batch])
                step_key = jax.random.fold_in(key, epoch * per_epoch + i)
                new = _step(
                    optimiser, total, params, opt_state, static, x, y, index, step_key, augment
                )
                value, counts = float(new[2]), np.asarray(new[3])
                if not np.isfinite(value):
                    raise FloatingPointError(
                        f"the training loss became {value} at epoch {epoch + 1}, step {i + 1}: "
                        "lower the learning rate."
                    )
                # One assignment: an interrupt lands before or after a whole step.
                params, opt_state, sums, at = (
                    new[0],
                    new[1],
                    sums + (value, counts[0], counts[1]),
                    [epoch, i + 1],
                )
                bar.step(value, sums[1] / max(sums[2], 1))
            record = {
                "epoch": epoch + 1,
                "loss": sums[0] / per_epoch,
                "train_iou": sums[1] / max(sums[2], 1),
                "seconds": time.perf_counter() - t_epoch,
            }
            if validation is not None:
                trained = eqx.combine(optimiser.result(params), static)
                logits = predict_logits(trained, validation[0])
                record["val_iou"] = _pooled_iou(logits, validation[1])
            val = f", validation IoU {record['val_iou']:.3f}" if "val_iou" in record else ""
            bar.epoch(
                f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}, running IoU "
                f"{record['train_iou']:.3f}{val} ({record['seconds']:.1f} s)"
            )
            history = [*history, record]
            at = [epoch + 1, 0]
            if folder is not None:
                _save_checkpoint(folder, run, (params, opt_state), *at, history, None)
    except KeyboardInterrupt:
        bar.close()
        if folder is not None:
            _save_checkpoint(folder, run, (params, opt_state), *at, history, sums)
            say(
                f"interrupted after {at[1]} step(s) of epoch {at[0] + 1}: checkpoint kept in "
                f"{folder}; rerun the same command to resume.",
                flush=True,
            )
        raise
    bar.close()
    model = eqx.combine(optimiser.result(params), static)
    return Trained(model, history, resumed, total, time.perf_counter() - t_start)


def _paths(folder: str) -> tuple[str, str]:
    return os.path.join(folder, "checkpoint.eqx"), os.path.join(folder, "checkpoint.json")


def _save_checkpoint(folder, run, state, epoch, step, history, sums) -> None:
    leaves, meta = _paths(folder)
    os.makedirs(folder, exist_ok=True)
    counter = jnp.asarray(epoch * 1_000_000 + step)
    eqx.tree_serialise_leaves(leaves + ".tmp", (state, counter))
    os.replace(leaves + ".tmp", leaves)
    record = {"settings": run, "epoch": epoch, "step": step, "history": history}
    if sums is not None:
        record["partial"] = [float(v) for v in sums]
    write_json(meta, record)


def _load_checkpoint(folder, run, like, say):
    leaves, meta = _paths(folder)
    record = read_json(meta)
    if record is None or not os.path.exists(leaves):
        return None
    if record.get("settings") != run:
        changed = _changed(record.get("settings") or {}, run)
        say(
            f"checkpoint in {folder} is for other settings ({changed}); starting afresh.",
            flush=True,
        )
        return None
    epoch, step = int(record["epoch"]), int(record["step"])
    try:
        state, counter = eqx.tree_deserialise_leaves(leaves, (like, jnp.asarray(0)))
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: start afresh
        say(f"checkpoint in {folder} could not be read ({err}); starting afresh.", flush=True)
        return None
    if int(counter) != epoch * 1_000_000 + step:
        say(f"checkpoint in {folder} is incomplete; starting afresh.", flush=True)
        return None
    if epoch >= run["epochs"]:
        say(f"already trained ({epoch} epochs): loading the checkpoint in {folder}.", flush=True)
    else:
        where = f"epoch {epoch + 1}, step {step + 1}" if step else f"the start of epoch {epoch + 1}"
        say(f"resuming from {where} (checkpoint in {folder}).", flush=True)
    sums = np.asarray(record.get("partial", [0.0, 0.0, 0.0]), float)
    return state, epoch, step, record["history"], sums
