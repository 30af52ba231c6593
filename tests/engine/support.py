"""Helpers for tests whose expected kernel depends on the host: a C compiler builds the native kernels, and
int8_native / int8_onednn also need AVX-512 VNNI. Without them a test skips with the kernel's own reason, or
expects the next kernel its preference names, instead of failing for the wrong reason."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import pytest
import torch

from qbench.engine.kernels import KERNELS
from qbench.engine.primitives import QuantSpec


def require_kernel(name: str, w: QuantSpec, a: Optional[QuantSpec], device: str = "cpu") -> None:
    """Skip the calling test when kernel `name` cannot run (w, a) here, with its reason."""
    reason = KERNELS.get(name).supports(w, a, device)
    if reason:
        pytest.skip(f"{name} cannot run here: {reason}")


def first_available(w: QuantSpec, a: Optional[QuantSpec], *names: str, device: str = "cpu") -> str:
    """The first of `names` (in the order the test expects auto to prefer them) that runs (w, a) on this host."""
    for name in names:
        if KERNELS.get(name).supports(w, a, device) is None:
            return name
    pytest.skip(f"none of {', '.join(names)} can run here")


@contextmanager
def torch_threads(n: Optional[int]):
    """torch's intra-op thread count set to `n` inside the block (unchanged for None), restored after it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
