"""Transfer of kernel grids across runs: learning rates, targets, held-out inputs."""

import importlib
from typing import Any

from ._scheduled._problem import surrogate_for as surrogate_for


def __getattr__(name: str) -> Any:
    # The study lives with the other studies; imported on first use.
    if name == "transfer_study":
        return importlib.import_module("..studies._transfer", __name__).transfer_study
    raise AttributeError(f"module 'ntkode.transfer' has no attribute {name!r}")
