"""How the C library's allocator hands memory to the tensors a forward allocates, and the one setting qbench changes.

glibc's malloc serves large blocks (from 128 KiB, raised dynamically up to 32 MiB) with their own mmap and returns
them to the kernel on free, and trims the top of its heap once 128 KiB of it is free. A forward of a model allocates
and frees activations of megabytes each, so each forward maps fresh pages, and the kernel faults in and zeroes
every one of them on first touch: all-MiniLM-L6-v2 at batch 8 x 128 tokens took 11,000 minor page faults per forward
(44 MiB of pages zeroed), baseline and quantized alike. That is time the model's arithmetic does not need, and it
weighs more on the faster (quantized) side, so it shrinks every speed-up.

`reuse_freed_memory()` keeps freed memory in the process instead (mallopt: M_MMAP_THRESHOLD 1 GiB, so blocks come
from the heap, and M_TRIM_THRESHOLD 1 GiB, so the heap keeps what it grew to): the same forwards then take no page
faults after the first. It is what a deployment that preloads a caching allocator (jemalloc, tcmalloc) gets. The
setting holds for the whole process from then on (glibc cannot return to its dynamic threshold), so `describe()`
says what the process runs under, whoever asked for it; a run records that beside the threads.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Optional

M_TRIM_THRESHOLD = -1          # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30            # bytes: blocks below it come from the heap; the heap keeps up to this much free

_applied: Optional[str] = None  # what reuse_freed_memory() set in this process, once it has


def _glibc() -> tuple[Optional[ctypes.CDLL], str]:
    """(the C library, its name and version) where it is glibc, else (None, why not)."""
    if platform.system() != "Linux":
        return None, f"{platform.system()} C library"
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None, "not glibc"
    version.restype = ctypes.c_char_p
    return libc, f"glibc {version().decode()} malloc"


def reuse_freed_memory() -> str:
    """Keep freed memory in this process (glibc: mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to 1 GiB); returns
    describe(). Elsewhere (not glibc, or mallopt refused) nothing changes and describe() says so."""
    global _applied
    libc, name = _glibc()
    if libc is not None and _applied is None:
        if libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1:
            _applied = f"{name}, freed memory kept in the process (mallopt: mmap and trim thresholds 1 GiB)"
    return describe()


def describe() -> str:
    """The allocator this process runs under, as the card prints it: with what the environment set (LD_PRELOAD,
    MALLOC_* variables, GLIBC_TUNABLES), which a process inherits and qbench does not change."""
    said = _applied or f"{_glibc()[1]}, its defaults (freed large blocks go back to the kernel)"
    env = [f"{k}={v}" for k, v in sorted(os.environ.items())
           if k.startswith("MALLOC_") or (k == "GLIBC_TUNABLES" and "malloc" in v)]
    env += [f"LD_PRELOAD={os.path.basename(p)}" for p in os.environ.get("LD_PRELOAD", "").split()
            if "malloc" in os.path.basename(p)]
    return said + (f"; set by the environment: {', '.join(env)}" if env else "")
