"""rtn: round to nearest, with min/max qparams per quantization block (primitives.quantize, exactly)."""
from __future__ import annotations

from qbench.engine.methods.base import METHODS, Method
from qbench.engine.primitives import quantize
from qbench.engine.tensors import QuantizedWeight


class RoundToNearest(Method):
    name = "rtn"

    def quantize(self, weight, spec, context=None):
        return QuantizedWeight.from_qtensor(quantize(weight.detach().float(), spec))


RTN = RoundToNearest()
METHODS.add(RTN.name, RTN)


def rtn(weight, spec) -> QuantizedWeight:
    """The round-to-nearest QuantizedWeight of a float (N, K) weight."""
    return RTN.quantize(weight, spec)
