"""Numbers quoted in the paper, each read from a study's `results.json` and recorded with its
source, so that a test can check every quoted number against the file it came from."""

import json
import math
import pathlib
from typing import Any


class Missing(KeyError):
    """A study or a key the paper needs is not in this build."""


FORMATS = {
    "pct": lambda v: f"{100 * v:.2f}%",
    "pct_capped": lambda v: f"{100 * v:.2f}%" if v < 10 else "> 1000%",  # a diverged surrogate
    "g3": lambda v: f"{v:.3g}",
    "g2": lambda v: f"{v:.2g}",
    "e2": lambda v: f"{v:.2e}",
    "f2": lambda v: f"{v:.2f}",
    "f1": lambda v: f"{v:.1f}",
    "int": lambda v: f"{int(v)}",
    "x": lambda v: f"{v:.1f}×",
    "x2": lambda v: f"{v:.2f}×",
    "min": lambda v: f"{v / 60:.1f} min",
    "str": lambda v: f"{v}",
}


def lookup(record: Any, key: str) -> Any:
    """`record["a"]["b"][0]` for the key `"a/b/0"`."""
    value = record
    for part in key.split("/"):
        if isinstance(value, list):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                raise Missing(key) from None
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise Missing(key)
    return value


def render(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return FORMATS[fmt](value)


class Numbers:
    """`N(study, key, fmt)` returns the formatted number and records where it came from."""

    def __init__(self, root: pathlib.Path, studies):
        self.root = root
        self.records: dict[str, Any] = {}
        self.files: dict[str, str] = {}
        for name in studies:
            self._load(name, f"{name}/results.json")
        # The builder's own record: commands, exit codes, seconds, load (key "runs").
        self._load("runs", "runs.json")
        self.quoted: list[dict[str, str]] = []

    def _load(self, name: str, file: str) -> None:
        path = self.root / file
        if path.exists():
            self.records[name], self.files[name] = json.loads(path.read_text()), file

    def has(self, study: str, key: str = "") -> bool:
        if study not in self.records:
            return False
        try:
            lookup(self.records[study], key) if key else None
        except Missing:
            return False
        return True

    def value(self, study: str, key: str) -> Any:
        if study not in self.records:
            raise Missing(f"{study}/results.json")
        return lookup(self.records[study], key)

    def __call__(self, study: str, key: str, fmt: str = "g3") -> str:
        text = render(self.value(study, key), fmt)
        self.quoted.append({"file": self.files[study], "key": key, "format": fmt, "text": text})
        return text

    def dump(self, path: pathlib.Path) -> None:
        path.write_text(json.dumps(self.quoted, indent=1, ensure_ascii=False))
