"""`ntkode closure`: the Jordan-curve closure study."""
