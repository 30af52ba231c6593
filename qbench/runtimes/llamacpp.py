"""llama.cpp as a peer runtime: its own quantization types, run by its own engine, in qbench's cells.

A scheme `runtime: {name: llama.cpp, type: Q4_0}` on a GGUF model:
1. writes the float GGUF of the model (qbench.models.gguf_export: the file's metadata and the very fp32 weights
   of qbench's baseline, checked bit for bit by tests/models/test_llamacpp_oracle.py);
2. requantizes it with llama.cpp's own quantizer (`llama_model_quantize`, the code behind `llama-quantize`) to
   the type asked, cached per float file, type and llama.cpp build; llama.cpp keeps its own rules for which
   tensor gets which type (e.g. Q4_K_M gives some tensors Q6_K, and a tensor whose rows are not a multiple of
   256 a fallback type): the realized type of every tensor is read back from the file and recorded;
3. loads it with llama.cpp's C API (through llama-cpp-python's bindings) on the run's thread count, one KV-cache
   stream per sequence, and evaluates batches of sequences in one `llama_decode` call, as llama.cpp's own
   batched tools do.

What llama.cpp does that qbench's baseline does not, recorded in the cell: on CPUs its matmuls with quantized
weights first quantize the activations to 8 bits per block (Q8_0, Q8_1 or Q8_K, by weight type), and its KV
cache is F16 by default (`kv_cache: f32` keeps it float32). The per-tensor SQNR compares llama.cpp's
dequantized weights with the float weights it was given (the gguf package's dequantizer, the one the float
file was written with).

Facts on the formats are from ggml's quantization code and llama.cpp's documentation (ggml-org/llama.cpp).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from qbench.errors import ModelError
from qbench.runtimes.base import PeerModel, PeerState
from qbench.schema.experiment import LLAMACPP_TYPES as QUANT_TYPES  # the file types a scheme may ask for

EXTRA = "pip install 'qbench-cards[llamacpp]' (builds llama.cpp from source, minutes)"

# GGML tensor type -> (weights as stored, what llama.cpp's CPU matmul does to the activations)
_Q8_0 = "int8 blocks of 32 (Q8_0), dynamic"
_Q8_1 = "int8 blocks of 32 with block sums (Q8_1), dynamic"
_Q8_K = "int8 blocks of 256 (Q8_K), dynamic"
FORMATS = {
    "F32": ("float32", "float32"),
    "F16": ("float16", "float16 (rounded to fp16 for the matmul)"),
    "BF16": ("bfloat16", "bfloat16 (rounded to bf16 for the matmul)"),
    "Q8_0": ("int8 sym, blocks of 32, fp16 scale", _Q8_0),
    "Q5_0": ("5-bit sym, blocks of 32, fp16 scale", _Q8_0),
    "Q5_1": ("5-bit asym, blocks of 32, fp16 scale and min", _Q8_1),
    "Q4_0": ("4-bit sym, blocks of 32, fp16 scale", _Q8_0),
    "Q4_1": ("4-bit asym, blocks of 32, fp16 scale and min", _Q8_1),
    "IQ4_NL": ("4-bit non-uniform table, blocks of 32, fp16 scale", _Q8_0),
    "Q6_K": ("6-bit sym, 16 blocks of 16 per 256 with int8 scales, fp16 super-scale", _Q8_K),
    "Q5_K": ("5-bit asym, 8 blocks of 32 per 256 with 6-bit scales and mins, fp16 super-scales", _Q8_K),
    "Q4_K": ("4-bit asym, 8 blocks of 32 per 256 with 6-bit scales and mins, fp16 super-scales", _Q8_K),
    "Q3_K": ("3-bit sym, 16 blocks of 16 per 256 with 6-bit scales, fp16 super-scale", _Q8_K),
    "Q2_K": ("2-bit asym, 16 blocks of 16 per 256 with 4-bit scales and mins, fp16 super-scale", _Q8_K),
}
_FLOAT = {"F32", "F16", "BF16"}


def ftype_name(type_: str) -> str:
    """llama-cpp-python's constant for a file type (ALL_F32, MOSTLY_Q4_0, ...)."""
    return "LLAMA_FTYPE_ALL_F32" if type_ == "F32" else f"LLAMA_FTYPE_MOSTLY_{type_}"


class LlamaCppRuntime:
    """The `llama.cpp` runtime (llama-cpp-python's bindings of llama.cpp's C API)."""

    name = "llama.cpp"
    extra = EXTRA

    def problem(self) -> Optional[str]:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            return f"llama-cpp-python is not installed: {EXTRA}"
        return None

    def version(self) -> str:
        from importlib.metadata import version

        return f"llama-cpp-python {version('llama_cpp_python')}"

    def build(self, loaded, config, threads: int, reserve: int = 64) -> "LlamaCppModel":
        from qbench.models.gguf_export import cached_float_gguf

        problem = self.problem()
        if problem:
            raise ModelError(problem)
        if loaded.task != "causal_lm" or loaded.source_format is None or not str(loaded.source).endswith(".gguf"):
            raise ModelError("llama.cpp runs causal LMs loaded from a GGUF file (gguf: ids, smollm2-135m, ...)")
        src = Path(loaded.source)
        float_file = cached_float_gguf(src)
        qfile = quantized_file(float_file, config.type, threads)
        kernel = f"llama.cpp {config.type}"
        records, held, exact = tensor_map(float_file, qfile, kernel)
        model = LlamaCppModel(qfile, threads, kv_f32=config.kv_cache == "f32", reserve=reserve)
        types = _type_counts(qfile)
        model.peer = PeerState(
            records=records, held_bytes=held, kernel=kernel,
            backend=f"llama.cpp via {self.version()}, CPU, {threads} threads",
            info={"name": self.name, "version": self.version(), "type": config.type, "threads": threads,
                  "kv_cache": config.kv_cache, "tensor_types": types, "file_bytes": qfile.stat().st_size,
                  "system_info": model.system_info,
                  "source": f"requantized by llama.cpp from the float GGUF of {src.name} (the baseline's fp32 "
                            "weights)"},
            source_grid=_grid_note(config.type, exact, records))
        return model


def quantized_file(float_file: Path, type_: str, threads: int) -> Path:
    """`float_file` requantized by llama.cpp to `type_`, under the qbench cache (once per float file, type and
    llama-cpp-python version; the float file's name carries its source's sha256)."""
    from importlib.metadata import version

    from qbench.atomic import atomic_path
    from qbench.cache import cache_dir

    if type_ not in QUANT_TYPES:
        raise ModelError(f"llama.cpp type '{type_}' is not one of {', '.join(QUANT_TYPES)}")
    dst = cache_dir() / "llamacpp" / f"{float_file.stem}.{type_}.llama-cpp-python{version('llama_cpp_python')}.gguf"
    if dst.is_file():
        return dst
    import llama_cpp as lc

    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, ftype_name(type_))
    params.nthread = threads
    with atomic_path(dst) as tmp:
        with _quiet() as log:
            lc.llama_backend_init()
            rc = lc.llama_model_quantize(str(float_file).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise ModelError(f"llama.cpp could not quantize {float_file.name} to {type_} (llama_model_quantize "
                             f"returned {rc}){log.why()}")
    return dst


def tensor_map(float_file: Path, qfile: Path, kernel: str) -> tuple[list, int, dict[str, bool]]:
    """(ModuleRecord per 2-D weight tensor, bytes of every tensor in the quantized file, {tensor: weights
    unchanged by the round trip}). SQNR from the gguf package's dequantization of llama.cpp's tensors."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from qbench.engine.api import ModuleRecord

    fl = {t.name: t for t in GGUFReader(str(float_file)).tensors}
    records, held, exact = [], 0, {}
    for t in GGUFReader(str(qfile)).tensors:
        held += int(t.n_bytes)
        if len(t.shape) != 2:
            continue
        typ = t.tensor_type.name
        cols, rows = (int(d) for d in t.shape)
        w = np.asarray(fl[t.name].data, dtype=np.float32).reshape(rows, cols)
        wq = w if typ == "F32" else np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(rows, cols)
        err = float(np.square(w.astype(np.float64) - wq).sum())
        exact[t.name] = err == 0.0
        sqnr = None if err == 0.0 else 10 * math.log10(float(np.square(w.astype(np.float64)).sum()) / err)
        name = t.name.removesuffix(".weight")
        op = "embedding" if name == "token_embd" else "lm_head" if name == "output" else "linear"
        weights, acts = FORMATS.get(typ, (typ, "llama.cpp's own"))
        records.append(ModuleRecord(
            name=name, op=op, shape=(rows, cols), requested=True, applied=True, reason="",
            kernel=kernel, weights=f"{typ}: {weights}",
            activations="float (embedding lookup)" if op == "embedding" else acts, sqnr_db=sqnr,
            bytes_before=rows * cols * 4, bytes_after=int(t.n_bytes)))
    return records, held, exact


def _type_counts(path: Path) -> dict[str, int]:
    from qbench.models.gguf_header import read_header

    return read_header(path).type_counts()


def _grid_note(type_: str, exact: dict[str, bool], records: list) -> Optional[str]:
    """A measured note when llama.cpp's requantization left quantized weights unchanged (it reproduced the
    source file's grid: zero error there measures nothing)."""
    same = [r.name for r in records if exact.get(f"{r.name}.weight") and not r.weights.startswith(("F32", "F16"))]
    if not same:
        return None
    shown = ", ".join(same[:3]) + (f" and {len(same) - 3} more" if len(same) > 3 else "")
    return (f"llama.cpp {type_} reproduces the source file's weights exactly on {len(same)} of {len(records)} "
            f"tensors ({shown}): zero quantization error there measures nothing")


class _Log:
    """What llama.cpp wrote to stderr inside a `_quiet()` block."""

    def __init__(self):
        self.text = ""

    def why(self) -> str:
        """llama.cpp's own reason for a failure: its first error line (the cause; later ones repeat that
        something failed), or ''."""
        lines = [ln.strip() for ln in self.text.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
        return f": {lines[0][:300]}" if lines else ""


@contextlib.contextmanager
def _quiet():
    """llama.cpp logs to the process's stderr from C: keep it off the user's terminal while it works, and
    keep it (the yielded _Log) so that a failure can quote llama.cpp's reason."""
    import sys
    import tempfile

    log = _Log()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 2)
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            log.text = sink.read().decode(errors="replace")


class LlamaCppModel(PeerModel):
    """A GGUF file run by llama.cpp: sequences evaluated as one batch, one KV-cache stream per sequence."""

    def __init__(self, path: Path, threads: int, kv_f32: bool = False, reserve: int = 64):
        """`reserve`: decode steps a sequence may take after its prompt (the context is sized for them)."""
        super().__init__()
        import llama_cpp as lc

        self._lc, self.path, self.threads, self.kv_f32, self.reserve = lc, Path(path), threads, kv_f32, reserve
        with _quiet() as log:
            lc.llama_backend_init()
            mp = lc.llama_model_default_params()
            self._model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {self.path.name}{log.why()}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self.system_info = lc.llama_print_system_info().decode(errors="replace").strip()
        self._ctx = None
        self._batch = None
        self._batch_cap = 0
        self._shape = (0, 0)          # (sequences, tokens per sequence) the context holds
        self._pos: list[int] = []

    def _ensure(self, n_seq: int, per_seq: int, n_tokens: int) -> None:
        """A context with at least n_seq streams of per_seq cells and a batch of n_tokens."""
        lc = self._lc
        have_seq, have_len = self._shape
        if self._ctx is not None and n_seq <= have_seq and per_seq <= have_len and n_tokens <= self._batch_cap:
            lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
            return
        self._free_ctx()
        n_seq, per_seq = max(n_seq, have_seq), max(256, -(-max(per_seq, have_len) // 256) * 256)
        cap = max(n_tokens, 512)
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_seq * per_seq, cap, 512, n_seq
        cp.kv_unified = False                       # a stream per sequence: attention sees its own tokens only
        cp.n_threads = cp.n_threads_batch = self.threads
        if self.kv_f32:     # the exact setting: F32 cache, no flash attention (its CPU path rounds Q to F16)
            cp.type_k = cp.type_v = lc.GGML_TYPE_F32
            cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        with _quiet() as log:
            self._ctx = lc.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise ModelError(f"llama.cpp could not create a context of {n_seq} x {per_seq} tokens{log.why()}")
        self._batch = lc.llama_batch_init(cap, 0, n_seq)
        self._batch_cap, self._shape = cap, (n_seq, per_seq)

    def _decode(self, tokens: np.ndarray, seq: np.ndarray, pos: np.ndarray, out: np.ndarray) -> np.ndarray:
        """One llama_decode of the given tokens; logits of the positions flagged in `out`, in order."""
        lc, b, n = self._lc, self._batch, len(tokens)
        b.n_tokens = n
        # the arrays are bound to names so that they outlive the copies out of them
        tok, p, o, ones = (np.ascontiguousarray(tokens, np.int32), np.ascontiguousarray(pos, np.int32),
                           np.ascontiguousarray(out, np.int8), np.ones(n, np.int32))
        ctypes.memmove(b.token, tok.ctypes.data, 4 * n)
        ctypes.memmove(b.pos, p.ctypes.data, 4 * n)
        ctypes.memmove(b.logits, o.ctypes.data, n)
        ctypes.memmove(b.n_seq_id, ones.ctypes.data, 4 * n)
        for i, s in enumerate(seq.tolist()):
            b.seq_id[i][0] = s
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for {n} tokens")
        n_out = int(out.sum())
        ptr = lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)).copy()

    def start(self, seqs: list[np.ndarray], keep: int) -> np.ndarray:
        lens = [len(s) for s in seqs]
        if keep == 0 and len(set(lens)) != 1:
            raise ValueError("all positions of sequences of different lengths: ask one sequence at a time")
        self._ensure(len(seqs), max(lens) + self.reserve + 1, sum(lens))
        tokens = np.concatenate(seqs)
        seq = np.repeat(np.arange(len(seqs)), lens)
        pos = np.concatenate([np.arange(n) for n in lens])
        out = np.zeros(len(tokens), np.int8)
        ends = np.cumsum(lens)
        for e, n in zip(ends, lens):
            out[e - (n if keep == 0 else min(keep, n)):e] = 1
        logits = self._decode(tokens, seq, pos, out)
        self._pos = lens
        k = lens[0] if keep == 0 else keep
        return logits.reshape(len(seqs), k, self.n_vocab)

    def extend(self, tokens: np.ndarray) -> np.ndarray:
        n = len(tokens)
        if n != len(self._pos):
            raise ValueError(f"{n} tokens for {len(self._pos)} live sequences")
        if max(self._pos) + 1 > self._shape[1]:
            raise ValueError(f"sequence longer than the context's {self._shape[1]} tokens per sequence")
        logits = self._decode(tokens, np.arange(n), np.asarray(self._pos), np.ones(n, np.int8))
        self._pos = [p + 1 for p in self._pos]
        return logits.reshape(n, 1, self.n_vocab)

    def _free_ctx(self) -> None:
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            with _quiet():
                self._lc.llama_free(self._ctx)
            self._ctx = None

    def close(self) -> None:
        self._free_ctx()
        if getattr(self, "_model", None):
            with _quiet():
                self._lc.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
