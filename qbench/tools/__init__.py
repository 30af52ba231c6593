"""Tools beside the library layers (like qbench.bench): scripts that may combine models, datasets and metrics.

Nothing in the library imports them (the one exception is the compatibility shim
qbench.models.train_reflm, kept so its old ``python -m`` name still works).
"""
