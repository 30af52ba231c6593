"""Peer runtimes: whole-model engines other than qbench's, measured in the same cells as qbench's schemes.

A scheme with a `runtime` section is not run through qbench's module-swap kernels: the runtime builds its own
quantized model from the baseline's weights and runs the whole forward pass itself. It hands the cell a
`PeerModel` (qbench.runtimes.base), which answers the calls the quality and speed stages make of a
transformers causal LM, so its perplexity, KL, agreement, generation, prefill and decode are measured by the
same code, on the same token ids and the same threads, against the same baseline as every other scheme.

    from qbench.runtimes import RUNTIMES
    peer = RUNTIMES.get("llama.cpp").build(loaded, scheme.runtime, threads=2)

Runtimes are optional extras; each imports its package only when a scheme uses it.
"""
from qbench.registry import Registry
from qbench.runtimes.base import PeerModel, Runtime

RUNTIMES: Registry[Runtime] = Registry("runtime")


def _register() -> None:
    from qbench.runtimes.llamacpp import LlamaCppRuntime

    RUNTIMES.add(LlamaCppRuntime.name, LlamaCppRuntime())


_register()

__all__ = ["RUNTIMES", "PeerModel", "Runtime"]
