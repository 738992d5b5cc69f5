"""Machine-readable records: one JSON writer and reader for comparisons and studies.

Writes are atomic (a temporary file, then a rename), so an interrupted run leaves the previous
file intact; arrays and numpy scalars become lists and numbers, result codes their sentences.
"""

import json
import math
import os
import threading
from typing import Any

import numpy as np


def _default(x: Any) -> Any:
    from ._results import RESULTS, as_record

    if isinstance(x, RESULTS):
        return as_record(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    try:
        return np.asarray(x).tolist()  # jax arrays
    except Exception as err:  # noqa: BLE001 - re-raised with the offending type
        raise TypeError(f"not JSON serialisable: {type(x).__name__}") from err


def _clean(x: Any) -> Any:
    # JSON has no NaN or infinity: write them as null (readers see "not measured").
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` to `path` as JSON, atomically (NaN and infinity become `null`)."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    text = json.dumps(_clean(json.loads(json.dumps(data, default=_default))), indent=1)
    # A name of its own per writer: two threads writing at once never share a temporary.
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON at `path`, or `None` if there is none (or it cannot be read)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def solution_arrays(sol: Any) -> dict[str, np.ndarray]:
    """A single-trajectory [`ntkode.Solution`][] as named arrays (weights left out), for
    `np.savez`; [`solution_from_arrays`][] reads them back."""
    from ._results import result_name

    out = {
        name: np.asarray(getattr(sol, name))
        for name in ("t", "train", "test", "train_dot", "test_dot", "y_train", "y_test", "t_stop")
    }
    out.update(
        final_train=np.asarray(sol.final.train),
        final_test=np.asarray(sol.final.test),
        final_train_dot=np.asarray(sol.final_dot.train),
        final_test_dot=np.asarray(sol.final_dot.test),
        result=np.asarray(result_name(sol.result)),
        loss=np.asarray(sol.loss.name),
        kind=np.asarray(sol.kind),
    )
    out.update({f"stats_{k}": np.asarray(v) for k, v in sol.stats.items()})
    return out


def solution_from_arrays(a: dict[str, np.ndarray], weights: Any = None) -> Any:
    """The [`ntkode.Solution`][] saved by [`solution_arrays`][] (with `weights` if given)."""
    import jax.numpy as jnp

    from ._losses import as_loss
    from ._results import RESULTS
    from ._solution import Outputs, Solution

    arr = lambda k: jnp.asarray(a[k])
    return Solution(
        t=arr("t"),
        train=arr("train"),
        test=arr("test"),
        train_dot=arr("train_dot"),
        test_dot=arr("test_dot"),
        weights=weights,
        result=getattr(RESULTS, str(a["result"])),
        stats={k[len("stats_") :]: arr(k) for k in a if k.startswith("stats_")},
        y_train=arr("y_train"),
        y_test=arr("y_test"),
        loss=as_loss(str(a["loss"])),
        t_stop=arr("t_stop"),
        final=Outputs(arr("final_train"), arr("final_test")),
        final_dot=Outputs(arr("final_train_dot"), arr("final_test_dot")),
        kind=str(a["kind"]),
    )
