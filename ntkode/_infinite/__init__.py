"""Infinite width: analytic NNGP/NTK kernels, NTK-parameterised MLPs, kernel predictors."""
