"""`ntkode compare`: the true flow against kernel surrogates."""
