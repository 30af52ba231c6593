"""Whether qbench's native C library can be used, asked through one function so that a kernel's description
(`backend`) can name the library's ISA once it is known without building it to say so: `qbench list kernels`
starts no C compiler, while a run (whose kernel selection asks first) records the ISA that ran."""
from __future__ import annotations

from typing import Optional

from qbench.engine.kernels import native

_asked = False


def native_reason() -> Optional[str]:
    """None when the native library is built and loaded (building it on first use), else why not."""
    global _asked
    _asked = True
    return native.unavailable()


def asked() -> bool:
    """Whether native_reason() has been called in this process (so the library's state is settled)."""
    return _asked


def known_isa() -> Optional[str]:
    """The library's ISA description once native_reason() has been asked and it is available, else None."""
    if not _asked or native.unavailable() is not None:
        return None
    return native.isa()


def isa_text(isa: Optional[str] = None) -> str:
    """For backend strings: the ISA when known, else a note that it is decided when the library is built."""
    isa = isa or known_isa()
    return isa if isa is not None else "ISA decided when the library is first built"
