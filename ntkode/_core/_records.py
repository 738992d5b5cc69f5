"""Machine-readable records: one JSON writer and reader for comparisons and studies.

Writes are atomic (a temporary file, then a rename), so an interrupted run leaves the previous
file intact; arrays and numpy scalars become lists and numbers, result codes their sentences.
"""

import json
import math
import os
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
    tmp = path + ".tmp"
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
