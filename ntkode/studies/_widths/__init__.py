"""`ntkode widths`: empirical NTKs against their infinite-width limit as the width grows."""
