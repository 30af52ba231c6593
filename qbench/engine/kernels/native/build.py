"""Building and loading qbench's native library: every .c file of this folder (qbench_cpu.h maps them) compiled
together by the system C compiler into one shared library, cached, loaded with ctypes and given its entry
points' C signatures.

The library is cached under qbench.cache.cache_dir() ($QBENCH_CACHE_DIR, default ~/.cache/qbench)/native, keyed
by every source and header, the compiler, the flags and what -march=native selects on this machine, so a machine
builds it once (seconds). Where no compiler is found or the build fails, `load()` says why instead of raising.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Optional

from qbench.atomic import atomic_path

HERE = Path(__file__).parent
SOURCES = tuple(sorted(HERE.glob("*.c")))      # compiled in one call into one library
HEADERS = tuple(sorted(HERE.glob("*.h")))      # not compiled, but keyed: a changed header is a changed library
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-pthread", "-std=gnu11", "-fopenmp")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _cache_dir() -> Path:
    from qbench.cache import cache_dir

    return cache_dir() / "native"


def _target(cc: str) -> str:
    """What -march=native means to this compiler here: its predefined macros (the CPU model and every ISA
    extension it may use). Read from the compiler, not /proc/cpuinfo: the key then tracks exactly what the build
    targets, on any architecture, so a cache shared between machines never hands one another's instructions."""
    try:
        proc = subprocess.run([cc, "-march=native", "-dM", "-E", "-x", "c", os.devnull], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return platform.processor()
    return proc.stdout + proc.stderr


def cache_key(cc_version: str, flags: list[str], target: str) -> str:
    """16 hex digits of the SHA-256 of every source and header (name and bytes), the compiler's version, the
    flags and the target."""
    h = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (cc_version, " ".join(flags), target):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


class _CompileError(Exception):
    """The compiler's complaint, raised inside atomic_path so that its partial output is removed, not renamed."""


def build(cc: str, flags: list[str], lib_path: Path) -> str:
    """Compile every source into one library at lib_path (atomically: concurrent builders end with one complete
    file); '' on success, else why not. An unwritable lib_path raises OSError."""
    try:
        with atomic_path(lib_path, mode=0o755) as tmp:          # rwx, as the linker leaves a library
            proc = subprocess.run([cc, *flags, "-o", str(tmp), *map(str, SOURCES), "-lm"], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode != 0:
                raise _CompileError(proc.stderr.strip()[-500:])
    except (_CompileError, subprocess.SubprocessError) as e:
        return f"building qbench's native kernels failed: {e}"
    return ""


@lru_cache(maxsize=1)
def load() -> tuple[Optional[ctypes.CDLL], str]:
    """(library, "") or (None, why it is unavailable). Builds the library on the first call of a process whose
    machine has none cached."""
    if platform.system() != "Linux":
        return None, f"native kernels are built on Linux only, not {platform.system()}"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc/gcc) on PATH to build qbench's native kernels"
    flags = list(FLAGS)
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"C compiler {cc} does not run: {e}"
    lib_path = _cache_dir() / f"qbench_cpu_{cache_key(version, flags, _target(cc))}.so"
    try:
        if not lib_path.exists():
            why = build(cc, flags, lib_path)
            if why:                              # no OpenMP for this compiler: the pthread pool runs the spans
                flags.remove("-fopenmp")
                lib_path = lib_path.with_name(lib_path.stem + "_noomp.so")
                why = "" if lib_path.exists() else build(cc, flags, lib_path)
            if why:
                return None, why
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:                     # unwritable cache, failed load: a reason, not a crash
        return None, f"qbench's native kernels cannot be built or loaded: {e}"
    declare(lib)
    return lib, ""


def declare(lib: ctypes.CDLL) -> None:
    """Set the C signatures of the library's entry points (the prototypes at the end of qbench_cpu.h)."""
    lib.qb_isa.restype = ctypes.c_char_p
    lib.qb_wo8_gemm.restype = _INT
    lib.qb_wo8_gemm.argtypes = [_P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT]
    lib.qb_wo8_dequant.restype = _INT
    lib.qb_wo8_dequant.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, _INT]
    lib.qb_wo4_gemm.restype = _INT
    lib.qb_wo4_gemm.argtypes = [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT]
    lib.qb_wo4_dequant.restype = _INT
    lib.qb_wo4_dequant.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, _INT]
    lib.qb_row_epilogue.restype = _INT
    lib.qb_row_epilogue.argtypes = [_P, _P, _P, _P, _P, _I64, _I64, _INT]
    lib.qb_quant_u8.restype = _INT
    lib.qb_quant_u8.argtypes = [_P, _P, _P, _P, _I64, _I64, _INT, _INT, _INT, _INT, _INT, _INT]
    lib.qb_center_zp.restype = ctypes.c_int32
    lib.qb_center_zp.argtypes = [_P, _I64, _P]
    lib.qb_w8a8_isa.restype = ctypes.c_char_p
    lib.qb_w8a8_gemm.restype = _INT
    lib.qb_w8a8_gemm.argtypes = [_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _INT, _INT, _INT, _INT, _INT,
                                 ctypes.c_float, ctypes.c_int32, _INT]
    lib.qb_w4a8_gemm.restype = _INT
    lib.qb_w4a8_gemm.argtypes = lib.qb_w8a8_gemm.argtypes
    lib.qb_attention.restype = _INT
    lib.qb_attention.argtypes = [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64, ctypes.c_float,
                                 _INT, _INT, _INT, _INT]
    lib.qb_rmsnorm.restype = _INT
    lib.qb_rmsnorm.argtypes = [_P, _P, _P, _P, _P, _I64, _I64, ctypes.c_float, _INT]
    lib.qb_decode_attention.restype = _INT
    lib.qb_decode_attention.argtypes = [_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64,
                                        ctypes.c_float, _I64, _I64, _INT]
    lib.qb_silu_mul.restype = _INT
    lib.qb_silu_mul.argtypes = [_P, _P, _P, _I64, _I64, _I64, _I64, _INT]
    lib.qb_prefill_rotary.restype = _INT
    lib.qb_prefill_rotary.argtypes = [_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64,
                                      _I64, _INT]
    lib.qb_w4a8_group_gemm.restype = _INT
    lib.qb_w4a8_group_gemm.argtypes = [_P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT, _INT, _INT, _INT,
                                       _INT, ctypes.c_float, ctypes.c_int32, _INT, _INT]
