"""Float GGUF files from quantized ones: the weights transformers dequantizes, in a file llama.cpp reads.

`write_float_gguf(src, dst)` copies every metadata key of `src` (tokenizer included: same keys, value types and
raw bytes, arrays element by element) except `general.file_type`, which becomes ALL_F32 (or MOSTLY_F16), and
writes every tensor, under its name and shape, dequantized with the gguf package's own dequantizer
(`gguf.quants.dequantize`, the one transformers' GGUF loader calls). An F32 file therefore holds exactly the
float32 weights of qbench's fp32 baseline, still in llama.cpp's layout (attn_q/attn_k rows stay permuted for its
RoPE; transformers un-permutes them on load), so llama.cpp can serve as an independent oracle of the baseline
and as the float source its own quantizer requantizes from.

F32 is the honest oracle of an fp32 baseline (every dequantized value is exact). F16 halves the file, rounds
2-D weights to half precision and keeps 1-D tensors (norms) in F32, as llama.cpp's converter does.

`float_gguf_problems(src, dst)` reads both files back and lists every difference from what the writer
promises (keys, value types, values, tensor names, shapes, types, data); empty when `dst` is right.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qbench.errors import ModelError

FLOAT_TYPES = ("F32", "F16")
_KEEP = {"F32", "F64", "I8", "I16", "I32", "I64"}    # tensor types copied unchanged (already exact)


def write_float_gguf(src: str | Path, dst: str | Path, float_type: str = "F32") -> Path:
    """Write `dst`: `src` with every quantized (or F16/BF16) tensor dequantized to `float_type`; atomic (a
    reader never sees half a file). Tensors are streamed one at a time, so memory stays near one tensor.
    ModelError with one line for a file this cannot copy faithfully."""
    import gguf

    from qbench.atomic import atomic_path

    if float_type not in FLOAT_TYPES:
        raise ModelError(f"float GGUF type '{float_type}' is not one of {', '.join(FLOAT_TYPES)}")
    src, dst = Path(src), Path(dst)
    reader = _open(src)
    arch = _field_value(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{src.name}: no general.architecture key; not a model GGUF file")
    plan = [(t, _target_type(t, float_type)) for t in reader.tensors]
    with atomic_path(dst) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.data_alignment = reader.alignment
        try:
            _copy_metadata(reader, writer, float_type)
            for t, target in plan:
                shape = tuple(int(d) for d in reversed(t.shape.tolist()))    # GGUF dims run innermost first
                nbytes = int(t.n_elements) * _itemsize(target)
                writer.add_tensor_info(t.name, shape, _np_dtype(target), nbytes, raw_dtype=target)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t, target in plan:
                writer.write_tensor_data(_float_data(t, target))
        finally:
            writer.close()
    return dst


def cached_float_gguf(src: str | Path, float_type: str = "F32") -> Path:
    """The float GGUF of `src` under the qbench cache, written once per source file content (sha256) and
    gguf version; later calls return the same file."""
    from importlib.metadata import version

    from qbench.cache import cache_dir
    from qbench.models.gguf_provenance import sha256_file

    src = Path(src)
    tag = f"{sha256_file(src)[:24]}-{float_type}-gguf{version('gguf')}"
    dst = cache_dir() / "gguf-float" / f"{src.stem}.{tag}.gguf"
    if not dst.is_file():
        write_float_gguf(src, dst, float_type)
    return dst


def gguf_metadata(path_or_reader: Any) -> dict[str, tuple[tuple[str, ...], Any]]:
    """{key: (value types, value)} of every key the file stores (the reader's virtual GGUF.* fields left
    out); strings as raw bytes, arrays as lists. Two files with equal dicts carry the same metadata."""
    reader = _open(Path(path_or_reader)) if isinstance(path_or_reader, (str, Path)) else path_or_reader
    return {name: (tuple(t.name for t in f.types), _value(f, name))
            for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def float_gguf_problems(src: str | Path, dst: str | Path, float_type: str = "F32", limit: int = 20) -> list[str]:
    """What differs between `dst` and the float copy of `src` that write_float_gguf promises (at most
    `limit` lines); [] when every key, type, value, tensor name, shape, type and value matches exactly."""
    import numpy as np

    a, b = _open(Path(src)), _open(Path(dst))
    problems: list[str] = []
    ma, mb = gguf_metadata(a), gguf_metadata(b)
    want_ft = _file_type(float_type)
    for key in sorted(set(ma) | set(mb)):
        if key == "general.file_type":
            if mb.get(key) != (("UINT32",), want_ft):
                problems.append(f"general.file_type is {mb.get(key)}, expected (('UINT32',), {want_ft})")
        elif ma.get(key) != mb.get(key):
            problems.append(f"key {key}: {_short(ma.get(key))} != {_short(mb.get(key))}")
    if [t.name for t in a.tensors] != [t.name for t in b.tensors]:
        problems.append("tensor names or order differ")
    tb = {t.name: t for t in b.tensors}
    for t in a.tensors:
        u = tb.get(t.name)
        if u is None:
            continue
        target = _target_type(t, float_type)
        if u.tensor_type != target or u.shape.tolist() != t.shape.tolist():
            problems.append(f"tensor {t.name}: {u.tensor_type.name}{u.shape.tolist()}, expected "
                            f"{target.name}{t.shape.tolist()}")
        elif not np.array_equal(np.asarray(u.data), _float_data(t, target), equal_nan=True):
            problems.append(f"tensor {t.name}: values differ from the dequantized source")
    return problems[:limit]


def _open(path: Path):
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # bad magic, truncation, unknown types: numpy and struct errors of many kinds
        raise ModelError(f"{path.name}: not a readable GGUF file ({type(e).__name__}: {_first(e)})") from None
    if reader.byte_order != "I":
        raise ModelError(f"{path.name}: a GGUF file in the other byte order; convert it first")
    split = reader.fields.get("split.count")
    if split is not None and int(split.contents()) > 1:
        raise ModelError(f"{path.name}: one shard of a split GGUF file; merge the shards first")
    return reader


def _copy_metadata(reader, writer, float_type: str) -> None:
    import gguf

    GT = gguf.GGUFValueType
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":   # virtual, or written by GGUFWriter
            continue
        vtype = f.types[0]
        value = _value(f, name)
        if name == "general.file_type":
            vtype, value = GT.UINT32, _file_type(float_type)
        if vtype == GT.ARRAY and not value:
            raise ModelError(f"key {name} is an empty array, which the gguf writer cannot write")
        sub = f.types[-1] if vtype == GT.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub)
    if "general.file_type" not in reader.fields:
        writer.add_file_type(_file_type(float_type))


def _value(f, name: str) -> Any:
    """A field's value as the writer takes it back: raw bytes for strings (no UTF-8 round trip), Python
    scalars for numbers, a list for an array (of bytes or of scalars)."""
    import gguf

    GT = gguf.GGUFValueType
    main = f.types[0]
    if main == GT.ARRAY:
        if len(f.types) != 2:
            raise ModelError(f"key {name}: nested GGUF arrays are not supported")
        if f.types[1] == GT.STRING:
            return [bytes(f.parts[i]) for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if main == GT.STRING:
        return bytes(f.parts[-1])
    return f.parts[-1].tolist()[0]


def _field_value(reader, name: str) -> Any:
    f = reader.fields.get(name)
    return f.contents() if f is not None else None


def _file_type(float_type: str) -> int:
    import gguf

    return int(gguf.LlamaFileType.ALL_F32 if float_type == "F32" else gguf.LlamaFileType.MOSTLY_F16)


def _target_type(t, float_type: str):
    """F32 for everything quantized (F16 for 2-D tensors with float_type F16); exact types kept."""
    from gguf import GGMLQuantizationType as Q

    if t.tensor_type.name in _KEEP and not (float_type == "F16" and t.tensor_type == Q.F32 and len(t.shape) >= 2):
        return t.tensor_type
    return Q.F16 if float_type == "F16" and len(t.shape) >= 2 else Q.F32


def _float_data(t, target):
    """The tensor's values in `target`, numpy shape (reversed GGUF dims)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    if t.tensor_type == target:
        return np.asarray(t.data)
    x = dequantize(t.data, t.tensor_type)      # float32, shape with the block dimension expanded
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    if x.shape != shape:
        raise ModelError(f"tensor {t.name}: dequantized to shape {x.shape}, expected {shape}")
    return x.astype(np.float16 if target == Q.F16 else np.float32, copy=False)


def _np_dtype(target):
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    return {Q.F32: np.float32, Q.F16: np.float16, Q.F64: np.float64, Q.I8: np.int8, Q.I16: np.int16,
            Q.I32: np.int32, Q.I64: np.int64}[target]


def _itemsize(target) -> int:
    import numpy as np

    return np.dtype(_np_dtype(target)).itemsize


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _first(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
