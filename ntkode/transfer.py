"""Transfer of kernel grids across runs: learning rates, targets, held-out inputs."""

from ._transfer import surrogate_for as surrogate_for, transfer_study as transfer_study
