"""What every study shares: its record in `results.json`, resuming, Ctrl-C, and honest timings.

**The record.** A study opens a [`StudyRecord`][] on its output folder with its *settings*
(everything that determines its numbers) and saves each finished *part* (a method of the
comparison, a width of the width study, a data set of the MKL study) as soon as it is done:

```json
{"study": "widths", "settings": {...}, "status": "running", "machine": {...},
 "runs": [...finished parts...], "slopes": {...study summary...}}
```

Writes are atomic, so an interrupted run always leaves the last complete file. Parts may
carry arrays (a solution, kernel snapshots), saved beside it in `parts/<key>.npz`.

**Resuming.** Opening a record on a folder whose `results.json` has the same study and the
same settings resumes it: the finished parts are loaded and the study skips them, saying so
(`resume=None`, the default). Changed settings start afresh, and say what changed;
`resume=True` (the CLIs' `--resume`) refuses to start afresh, `resume=False` (`--fresh`)
always does.

**Ctrl-C.** A jitted solve cannot be interrupted inside XLA, and a long one runs for minutes.
The command line therefore runs each study in a worker thread ([`run_interruptibly`][]) and
keeps the main thread free: on Ctrl-C it marks the record `"interrupted"`, prints one line
saying what is saved and how to resume, and exits at once (status 130), whatever XLA is
doing. Nothing is lost that was finished, because every part was saved when it finished.

**Timings.** [`median_seconds`][] times a call several times and reports the median;
[`machine`][] records the machine's load beside every timing, because on a shared machine
the same run can take 6× longer.

New studies (the closure study included) use the same three pieces: open a `StudyRecord`,
`put` each part when done, `finish()`; the CLI's `main` does the rest.
"""

import json
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._core._records import read_json, write_json

_LOCK = threading.Lock()
_OPEN: list["StudyRecord"] = []  # the records of the running study (for Ctrl-C's message)


def _normal(x: Any) -> Any:
    """`x` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(x, default=lambda v: np.asarray(v).tolist()))


def machine() -> dict[str, Any]:
    """The CPUs and their load average (1, 5, 15 minutes) now: print them beside timings."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        load = None
    return {"cpus": os.cpu_count(), "load_average": load}


def machine_line() -> str:
    """`"2 CPUs, load average 3.1 2.8 2.5"`: what the timings beside it were measured on."""
    m = machine()
    load = " ".join(f"{v:.1f}" for v in m["load_average"]) if m["load_average"] else "n/a"
    return f"{m['cpus']} CPUs, load average {load} (1, 5, 15 min)"


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Wall seconds of `fn()` (its result blocked on), as the median of `repeats` calls."""
    import jax

    times = []
    for _ in range(max(int(repeats), 1)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def prepare_out(out: str | os.PathLike | None, option: str = "--out") -> None:
    """Create the output folder, or raise a sentence saying why it cannot be used."""
    if out is None:
        return
    path = os.fspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a file, not a folder; pass a folder to write to.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{option} {path!r} cannot be created ({err.strerror}); pass a folder you can write to."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r} is not writable; pass a folder you can write to.")


class StudyRecord:
    """A study's `results.json`: its settings, its finished parts, and resuming them.

    **Arguments:**

    - `out`: the output folder (`None`: keep parts in memory only, nothing is resumed).
    - `study`: the study's name (a record of another study is never resumed).
    - `settings`: a JSON-able dict of everything that determines the study's numbers.
    - `parts`: the key under which the parts are written (`"rows"`, `"runs"`, ...).
    - `key`: with `key=None` parts are written as a dict `{key: part}`; with a function,
      as a list of parts, `key(part)` recovering each one's key on resuming.
    - `resume`: `None` (default) resumes when the settings match and starts afresh
      otherwise; `True` refuses to start afresh; `False` always starts afresh.
    - `log`: where to say what was resumed or why not.
    """

    def __init__(
        self,
        out: str | os.PathLike | None,
        study: str,
        settings: dict[str, Any],
        *,
        parts: str = "parts",
        key: Callable[[dict], str] | None = None,
        resume: bool | None = None,
        log: Callable[[str], Any] = print,
    ):
        self.out = None if out is None else os.fspath(out)
        self.study, self.settings = study, _normal(settings)
        self.parts_name, self.key = parts, key
        self.parts: dict[str, Any] = {}
        self.with_arrays: set[str] = set()
        self.extra: dict[str, Any] = {}
        self.resumed: list[str] = []
        self.started = time.perf_counter()
        if self.out is None:
            return
        prepare_out(self.out)
        self.path = os.path.join(self.out, "results.json")
        self._open(resume, log)
        self._save("running")
        _OPEN.append(self)

    def _open(self, resume: bool | None, log: Callable[[str], Any]) -> None:
        old = read_json(self.path)
        if resume is False or old is None:
            if resume is True:
                log(f"nothing to resume in {self.path}; starting afresh")
            self._clear_arrays()
            return
        changed = _differences(old.get("settings"), self.settings)
        if old.get("study") != self.study:
            changed = [f"the study ({old.get('study')!r} → {self.study!r})"]
        if changed:
            if resume is True:
                raise ValueError(
                    f"--resume: {self.path} was written with other settings ("
                    + "; ".join(changed)
                    + "); rerun with the same settings, or without --resume to start afresh."
                )
            log(f"starting afresh: the settings differ from {self.path} ({'; '.join(changed)})")
            self._clear_arrays()
            return
        stored = old.get(self.parts_name) or ({} if self.key is None else [])
        parts = dict(stored) if self.key is None else {self.key(p): p for p in stored}
        # A part saved with arrays is finished only if they are there (a copied folder?).
        arrays = set(old.get("arrays") or ())
        self.parts = {k: v for k, v in parts.items() if k not in arrays or self.has_arrays(k)}
        self.with_arrays = arrays & set(self.parts)
        self.resumed = list(self.parts)
        if self.resumed:
            log(
                f"resuming {self.path}: skipping {len(self.resumed)} finished part(s) "
                f"({', '.join(self.resumed)}); pass --fresh to recompute them"
            )

    # -- parts ----------------------------------------------------------------------------

    def __contains__(self, key: str) -> bool:
        return key in self.parts

    def get(self, key: str) -> Any:
        return self.parts[key]

    def put(self, key: str, part: Any, *, arrays: dict[str, Any] | None = None, **extra) -> None:
        """Record a finished part (with optional arrays) and rewrite `results.json`.

        `extra` updates the study's summary fields written beside the parts."""
        if arrays is not None and self.out is not None:
            folder = os.path.join(self.out, "parts")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{key}.npz")
            tmp = os.path.join(folder, f".{key}.{os.getpid()}.npz")
            np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
            os.replace(tmp, path)  # arrays first: a part is listed only once complete
            self.with_arrays.add(key)
        self.parts[key] = _normal(part)
        self.extra.update(extra)
        self._save("running")

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        """The arrays saved with part `key`."""
        assert self.out is not None
        with np.load(os.path.join(self.out, "parts", f"{key}.npz")) as f:
            return {k: f[k] for k in f.files}

    def has_arrays(self, key: str) -> bool:
        return self.out is not None and os.path.exists(
            os.path.join(self.out, "parts", f"{key}.npz")
        )

    def values(self) -> list[Any]:
        return list(self.parts.values())

    def update(self, **extra) -> None:
        """Update the study's summary fields written beside the parts; rewrite `results.json`."""
        self.extra.update(extra)
        self._save("running")

    def finish(self, **extra) -> None:
        """Mark the study finished (with its total wall seconds and the machine's load)."""
        self.extra.update(extra)
        self._save("finished")
        if self in _OPEN:
            _OPEN.remove(self)

    # -- files ----------------------------------------------------------------------------

    def payload(self, status: str) -> dict[str, Any]:
        parts = self.parts if self.key is None else list(self.parts.values())
        return {
            "study": self.study,
            "settings": self.settings,
            "status": status,
            "seconds": time.perf_counter() - self.started,
            "machine": machine(),
            self.parts_name: parts,
            "arrays": sorted(self.with_arrays),
            **self.extra,
        }

    def _save(self, status: str) -> None:
        if self.out is None:
            return
        with _LOCK:
            write_json(self.path, self.payload(status))

    def _clear_arrays(self) -> None:
        if self.out is not None:
            shutil.rmtree(os.path.join(self.out, "parts"), ignore_errors=True)


def _differences(old: Any, new: dict[str, Any]) -> list[str]:
    if not isinstance(old, dict):
        return ["no settings recorded"]
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def run_interruptibly(command: str, fn: Callable[[], int]) -> int:
    """Run `fn()` in a worker thread; on Ctrl-C, save the open study record as interrupted,
    print one line and exit at once with status 130 (no traceback, whatever XLA is doing)."""
    result: dict[str, Any] = {}

    def work():
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            result["error"] = err

    worker = threading.Thread(target=work, name=f"ntkode {command}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        _interrupted(command)
    if "error" in result:
        raise result["error"]
    return int(result.get("value") or 0)


def _interrupted(command: str) -> None:
    lines = []
    got = _LOCK.acquire(timeout=5.0)  # a write in progress finishes first; none starts after
    for record in list(_OPEN):
        if record.out is not None:
            write_json(record.path, record.payload("interrupted"))
            lines.append(f"{len(record.parts)} finished part(s) saved in {record.path}")
    # A study that keeps its own checkpoints (rather than a `StudyRecord`) resumes from them.
    what = "; ".join(lines) if lines else "no study record was open"
    print(
        f"\nntkode {command}: interrupted; {what}. Rerun the same command to resume.",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    del got
    # Exit now: the worker may be inside a long XLA call that cannot be interrupted.
    os._exit(130)


def add_resume_arguments(parser: Any) -> None:
    """`--resume` / `--fresh`, shared by every study's command line."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        action="store_true",
        help="resume the run recorded in --out (the default when its settings match; with "
        "--resume, other settings are an error instead of a fresh start)",
    )
    group.add_argument(
        "--fresh", action="store_true", help="recompute everything, ignoring --out's record"
    )


def resume_option(args: Any) -> bool | None:
    """`True` for `--resume`, `False` for `--fresh`, else `None` (resume if settings match)."""
    return True if args.resume else (False if args.fresh else None)


def explicit(args: Any, names: Iterable[str]) -> dict[str, Any]:
    """The options among `names` given on the command line (those not left at `None`)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}
