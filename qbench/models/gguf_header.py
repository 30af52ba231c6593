"""A cheap, bounds-checked walk over a GGUF file's header: enough to refuse a bad file before any work.

`gguf.GGUFReader` (what transformers uses) decodes every metadata array into numpy views, about 4 s for a
49,152-token vocabulary on this machine class; this walk skips arrays by their lengths (~0.1 s), checks
every read against the file's size, and computes where the tensor data must end, so a file that is not GGUF,
a truncated file and an unknown tensor type each fail with one line in `qbench validate`, before any weight
is read. Provenance and loading use the gguf package itself (qbench.models.gguf).

Layout (GGUF v2/v3, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
  magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (string key, u32 type, value)
  | n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
  | padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
"""
from __future__ import annotations

import functools
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbench.errors import ModelError

MAGIC = b"GGUF"
# GGUFValueType id -> struct code of a scalar; 8 is STRING and 9 is ARRAY (handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]   # GGUF order: dims[0] is the contiguous (input) dimension, torch's last
    type: str               # GGML type name: F32, F16, Q4_1, Q6_K, ...
    offset: int             # from the start of the tensor data
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]        # scalars and strings; arrays as {"array": item type id, "length": n}
    tensors: tuple[TensorInfo, ...]
    data_offset: int                # where tensor data starts in the file
    file_size: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def file_type(self) -> str | None:
        """general.file_type as a name (Q4_1, Q4_K_M, ...), None when the file does not say."""
        ft = self.metadata.get("general.file_type")
        if ft is None:
            return None
        from gguf import LlamaFileType

        try:
            return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")
        except ValueError:
            return f"file_type {ft}"

    def type_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(t.type for t in self.tensors).items()))


def read_header(path: str | Path) -> GGUFHeader:
    """Parse and check the header of the GGUF file at `path` (cached per path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    return _read_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    with open(path, "rb") as f:
        head = f.read(4)
        if head != MAGIC:
            raise ModelError(f"{os.path.basename(path)} is not a GGUF file (it starts with {head!r}, "
                             f"not {MAGIC!r})")
        return _Reader(f, size).header()  # reads the header in 4 MiB chunks, never the tensor data


class _Reader:
    """Sequential reads with bounds checks; every error is a ModelError naming what ended early."""

    CHUNK = 1 << 22

    def __init__(self, f, size: int):
        self.f, self.size, self.pos = f, size, 0
        self.buf, self.buf_start = b"", 0
        self.endian = "<"

    def _need(self, n: int, what: str) -> memoryview:
        if self.pos + n > self.size:
            raise ModelError(f"truncated GGUF file: {what} at byte {self.pos} needs {n} bytes, the file has "
                             f"{self.size}")
        end = self.pos + n
        if end > self.buf_start + len(self.buf) or self.pos < self.buf_start:
            self.f.seek(self.pos)
            self.buf, self.buf_start = self.f.read(max(n, self.CHUNK)), self.pos
        view = memoryview(self.buf)[self.pos - self.buf_start:end - self.buf_start]
        self.pos = end
        return view

    def scalar(self, code: str, what: str):
        return struct.unpack(self.endian + code, self._need(struct.calcsize(code), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("Q", what)
        return bytes(self._need(n, what)).decode("utf-8", errors="replace")

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise ModelError(f"truncated GGUF file: {what} at byte {self.pos} runs past the end ({self.size} "
                             "bytes)")
        self.pos += n

    def value(self, vtype: int, key: str):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], key)
        if vtype == _STRING:
            return self.string(key)
        if vtype == _ARRAY:
            itype, n = self.scalar("I", key), self.scalar("Q", key)
            if itype in _SCALARS:
                self.skip(n * struct.calcsize(_SCALARS[itype]), key)
            elif itype == _STRING:
                for _ in range(n):   # each string is a u64 length then its bytes
                    self.skip(self.scalar("Q", key), key)
            else:
                raise ModelError(f"GGUF metadata '{key}' holds an array of unsupported type {itype}")
            return {"array": itype, "length": n}
        raise ModelError(f"GGUF metadata '{key}' has unknown value type {vtype}")

    def header(self) -> GGUFHeader:
        self._need(4, "magic")
        version = self.scalar("I", "version")
        if version > 0xFFFF:  # written big-endian: the version reads byte-swapped
            self.endian = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in (2, 3):
            raise ModelError(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = self.scalar("Q", "tensor count"), self.scalar("Q", "metadata count")
        meta = {}
        for _ in range(n_kv):
            key = self.string("metadata key")
            meta[key] = self.value(self.scalar("I", key), key)
        tensors = tuple(self.tensor_info() for _ in range(n_tensors))
        align = int(meta.get("general.alignment", 32))
        data_offset = -(-self.pos // align) * align
        header = GGUFHeader(version, meta, tensors, data_offset, self.size)
        _check_data(header)
        return header

    def tensor_info(self) -> TensorInfo:
        name = self.string("tensor name")
        n_dims = self.scalar("I", name)
        if n_dims > 8:
            raise ModelError(f"GGUF tensor '{name}' claims {n_dims} dimensions")
        dims = tuple(self.scalar("Q", name) for _ in range(n_dims))
        type_id, offset = self.scalar("I", name), self.scalar("Q", name)
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            qtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ModelError(f"GGUF tensor '{name}' has GGML type id {type_id}, unknown to the installed gguf "
                             "package (pip install -U gguf)") from None
        n = math.prod(dims)
        if dims and dims[0] % block:
            raise ModelError(f"GGUF tensor '{name}': row length {dims[0]} is not a multiple of the {qtype.name} "
                             f"block ({block})")
        return TensorInfo(name, dims, qtype.name, offset, n // block * type_size)


def _check_data(h: GGUFHeader) -> None:
    """Every tensor's bytes lie inside the file: a truncated download fails here, not deep in a loader."""
    if not h.tensors:
        raise ModelError("GGUF file holds no tensors")
    last = max(h.tensors, key=lambda t: t.offset + t.nbytes)
    end = h.data_offset + last.offset + last.nbytes
    if end > h.file_size:
        raise ModelError(f"truncated GGUF file: tensor '{last.name}' ends at byte {end}, the file has "
                         f"{h.file_size} ({end - h.file_size} missing)")
