"""Scheduled NTKs: kernel grids, schedules, interpolation, the LPV surrogate, certificates."""
