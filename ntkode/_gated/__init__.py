"""Gated-ReLU networks and their NTK as multiple kernel learning: masked kernels, MKL solvers."""
