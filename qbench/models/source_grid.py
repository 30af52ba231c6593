"""Would a qbench weight scheme reproduce a GGUF model's own quantization grid exactly? Pure (no torch).

A model dequantized from a Q4_1 or Q8_0 file is not a float model: each block of its weights lies on the grid
the file stored. A scheme whose grid contains that grid gives zero error on those weights, which measures
nothing. This module decides it from what qbench.models.gguf_grid measured on the loaded weights: per tensor
and group size, how many groups qbench's RTN reproduces at each bit width, from

  asymmetric b bits is exact on a group  iff  r = range / unit divides 2^b - 1
  symmetric b bits is exact on a group   iff  α = max|x| / unit divides 2^(b-1) - 1

(unit: the finest grid through zero holding the group; signed or unsigned codes give the same grid, so
`signed` does not enter; "exact" means the grid holds every value: a scale such as range/255 is not a
float32 number and can leave one ulp). What this means for real files, measured on SmolLM2-135M's Q4_1 file
and Gemma-3-270M's Q4_K_M file (tests/models/test_gguf.py, test_gemma.py, test_source_grid.py):
- Q4_1 stores x = d*q + m with a float minimum m, so zero is on a block's grid in 0.3% of blocks, while
  qbench's zero point is an integer: 4-bit asymmetric groups of 32 do NOT reproduce Q4_1 (their grid is
  shifted by m mod d: a median max error of d/4 per block), nor does 8-bit (it needs 17*m/d integral).
  The same holds for Q4_0, Q5_0, Q5_1 written by gguf's reference quantizers (every bit width, symmetric
  or not, groups 16..128, per channel, per tensor); in Gemma's file, of the schemes tried (4/8-bit
  asymmetric groups of 32, 6-bit asymmetric and 8-bit symmetric groups of 16), none reproduces Q4_K or Q6_K.
- Q8_0 stores x = d*q, q in [-127, 127], with max|q| = 127 in each block of 32: int8 symmetric groups of 32
  reproduce it exactly (SmolLM2's embedding, tied to lm_head; Gemma's embedding and its Q8_0 v_proj layers).
  Groups of 16 do not (half of them lack the 127), nor groups of 64, per channel or per tensor (they mix
  blocks with different scales).
"""
from __future__ import annotations

from typing import Iterable, Optional

Verdict = Optional[str]   # "exact", "unproven" (group size not measured, nothing rules it out) or None


def reproduces_source_grid(source: dict, bits: int, symmetric: bool, granularity: str,
                           group_size: int | None, *, tensors: Iterable[str] | None = None) -> str | None:
    """Why a scheme's weight grid contains the source file's grid, or None when it provably does not.

    `source`: a LoadedModel.source_format (its "tensors" list) or one tensor record. `tensors`: the parameter
    names the scheme quantizes (default: all measured). A reason is also returned, marked "may", when the
    group size was not measured and nothing measured rules exactness out: a card should say so rather than
    trust a zero error.
    """
    records = _records(source, tensors)
    spec = _describe(bits, symmetric, granularity, group_size)
    found = {"exact": [], "unproven": []}
    for rec in records:
        v = tensor_verdict(rec, bits, symmetric, granularity, group_size)
        if v:
            found[v].append(rec)
    if found["exact"]:
        return (f"{spec} reproduces the file's own grid exactly on {_names(found['exact'], len(records))}: "
                "zero quantization error there measures nothing")
    if found["unproven"]:
        return (f"{spec} may reproduce the file's own grid on {_names(found['unproven'], len(records))} "
                "(this group size was not measured and nothing measured rules it out)")
    return None


def tensor_verdict(rec: dict, bits: int, symmetric: bool, granularity: str, group_size: int | None) -> Verdict:
    """'exact', 'unproven' or None for one tensor record."""
    exact = rec.get("exact")
    if exact is None:
        return "unproven" if rec.get("type") not in ("F32", "F16", "BF16", "F64") else None
    kind, n = _kind(bits, symmetric)
    key = _key(rec, granularity, group_size)
    if key in exact:
        e = exact[key]
        return "exact" if e.get(kind, [0] * 7)[bits - 2] == e["groups"] else None
    # Not measured at this size: a group that is exact has r <= 2^b - 1 (α <= 2^(b-1) - 1) in every part of
    # it (r only grows as groups merge), so one measured part above that rules the whole tensor out.
    bound = "max_a" if symmetric else "max_r"
    for size, e in exact.items():
        if size.isdigit() and group_size and group_size % int(size) == 0 and e[bound] > n:
            return None
    return "unproven"


def reproduced_share(rec: dict, bits: int, symmetric: bool, granularity: str, group_size: int | None
                     ) -> float | None:
    """Share of one tensor's groups that the scheme reproduces exactly (None when not measured)."""
    e = (rec.get("exact") or {}).get(_key(rec, granularity, group_size))
    if not e or not e["groups"]:
        return None
    return e.get(_kind(bits, symmetric)[0], [0] * 7)[bits - 2] / e["groups"]


def _kind(bits: int, symmetric: bool) -> tuple[str, int]:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be 2..8, got {bits}")
    return ("sym", (1 << (bits - 1)) - 1) if symmetric else ("asym", (1 << bits) - 1)


def _key(rec: dict, granularity: str, group_size: int | None) -> str:
    if granularity == "per_tensor":
        return "tensor"
    if granularity in ("per_channel", "per_token") or group_size == rec["shape"][-1]:
        return "row"
    if granularity != "per_group" or not group_size:
        raise ValueError(f"unknown weight granularity {granularity!r} (group_size {group_size})")
    return str(group_size)


def _records(source: dict, names: Iterable[str] | None) -> list[dict]:
    recs = source["tensors"] if "tensors" in source else [source]
    if names is None:
        return list(recs)
    wanted = set(names)
    return [r for r in recs if wanted & {r["name"], *r.get("aliases", ())}]


def _names(recs: list[dict], total: int) -> str:
    shown = ", ".join(f"{r['name']} ({r['type']})" for r in recs[:3])
    more = f" and {len(recs) - 3} more" if len(recs) > 3 else ""
    return f"{len(recs)} of {total} tensors: {shown}{more}"


def _describe(bits: int, symmetric: bool, granularity: str, group_size: int | None) -> str:
    gran = f"per_group({group_size})" if granularity == "per_group" else granularity
    return f"{bits}-bit {'symmetric' if symmetric else 'asymmetric'} {gran}"
