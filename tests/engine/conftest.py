"""Shared settings for the engine tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The engine tests run thousands of tiny matmuls: one intra-op thread is as fast when the
    machine is idle and avoids OpenMP spin-wait slowdowns (10x seen) when other processes share
    the cores. Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
