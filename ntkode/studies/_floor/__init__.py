"""The floor study: why point-sampled kernel grids stop improving on ReLU networks."""
