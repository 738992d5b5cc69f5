"""Problems, one `solve`, solutions and their status, losses, data, input checks, comparisons."""
