"""`ntkode mkl`: the gated-ReLU NTK against optimal multiple kernel learning."""
