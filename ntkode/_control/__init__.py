"""Learning-rate control on scheduled-NTK plants: discrete-time descent, policies, certificates."""
