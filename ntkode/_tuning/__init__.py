"""Grid placement by adjoints: tuning a scheduled-NTK surrogate's nodes against a reference run."""
