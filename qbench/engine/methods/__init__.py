"""How codes are chosen: each method turns a float weight (plus a MethodContext) into a QuantizedWeight.

    from qbench.engine.methods import METHODS, rtn
    qw = METHODS.get("rtn").quantize(weight, spec)      # == rtn(weight, spec)
"""
from qbench.engine.methods.base import METHODS, Method, MethodContext
from qbench.engine.methods.rtn import rtn

__all__ = ["METHODS", "Method", "MethodContext", "rtn"]
