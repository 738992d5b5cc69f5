"""Path kernels along the true training path (Domingos 2020) and the kernel machines they give."""
