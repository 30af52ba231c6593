"""qbench: what quantization really does to your model, on your hardware.

    import qbench
    records = qbench.quantize_(model, scheme)      # qbench's own engine
    outcome = qbench.api.run("experiments/int8_vs_fp16.yaml")

Importing qbench is cheap: torch is imported only by the functions that need it.
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name == "quantize_":
        from qbench.engine.api import quantize_

        return quantize_
    if name == "api":
        import importlib

        return importlib.import_module("qbench.api")
    raise AttributeError(f"module 'qbench' has no attribute {name!r}")
