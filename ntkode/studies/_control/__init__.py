"""`ntkode control`: learning rates designed on the scheduled-NTK surrogate, run on the network."""
