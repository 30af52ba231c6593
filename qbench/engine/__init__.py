"""qbench's quantize/GEMM engine.

    from qbench.engine import QuantSpec, quantize, dequantize, quantize_, QuantizedWeight
"""
from qbench.engine.primitives import QTensor, QuantSpec, choose_qparams, dequantize, fake_quantize, quantize
from qbench.engine.tensors import QuantizedWeight

__all__ = ["QTensor", "QuantSpec", "QuantizedWeight", "choose_qparams", "dequantize", "fake_quantize", "quantize",
           "quantize_", "ModuleRecord"]


def __getattr__(name):
    if name in ("quantize_", "ModuleRecord"):
        from qbench.engine import api

        return getattr(api, name)
    raise AttributeError(name)
