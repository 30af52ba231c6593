"""How codes are chosen: each method turns a float weight (plus a MethodContext) into a QuantizedWeight.

    from qbench.engine.methods import METHODS, rtn
    qw = METHODS.get("rtn").quantize(weight, spec)      # == rtn(weight, spec)
"""
from qbench.engine.methods.awq import awq_scales
from qbench.engine.methods.base import METHODS, Method, MethodContext
from qbench.engine.methods.gptq import gptq
from qbench.engine.methods.qat import QAT, TrainingData
from qbench.engine.methods.rtn import rtn
from qbench.engine.methods.smoothquant import smoothquant_scales

__all__ = ["METHODS", "Method", "MethodContext", "awq_scales", "QAT", "TrainingData", "gptq", "rtn", "smoothquant_scales"]
