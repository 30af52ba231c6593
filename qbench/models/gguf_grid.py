"""Measure, on the loaded float weights, whether each tensor still lies on the low-bit grid of its GGUF file,
and record what qbench's quantizer could reproduce exactly (decided by qbench.models.source_grid, no torch).

Every value of a float32 (or fp16/bf16) tensor is an integer multiple of 2^-E for one E per tensor, so the
tensor converts exactly to int64 `a` (N, K), K the input dimension, the one GGUF blocks run along. The tests
below are integer arithmetic on `a`: no tolerance, nothing assumed from the file's type.

Per source block of B values (32 for Q4_1, 16 for Q6_K: one scale, and offset, each):
  step D = gcd of (a - min): the grid spacing; span = (max - min) / D, so the block holds at most span + 1
           equally spaced values (span <= 15: a 16-level, 4-bit grid)
  unit G = gcd of all a: the spacing of the finest grid through zero that holds the block
qbench's RTN puts a group's levels on s*Z with an integer zero point (engine/primitives.py), so it reproduces
a group exactly iff every value is a multiple of s. In units of the group's G (values G*k, gcd(k) = 1), with
lo = min(min, 0) and hi = max(max, 0):
  r = (hi - lo) / G       asymmetric b bits, s = (hi - lo)/(2^b - 1): exact iff r divides 2^b - 1
  α = max(-lo, hi) / G    symmetric b bits, s = max|x|/(2^(b-1) - 1): exact iff α divides 2^(b-1) - 1
r and α only grow when groups merge (G shrinks, the range grows): once a block has r > 255 no group holding
it can be exact, so merging stops there. Inside a block whose offset min/D has a reduced denominator D/G
above 255 (Q4_1's float minimum, almost always), a non-constant group cannot be exact either: two of its
values would need D*Δc = s*j with |j| <= 255.
Recorded per group size (16 and up: smaller groups would cost most of the time, and source_grid calls a
scheme with them "unproven" unless a measured part rules it out):
  {"groups": n, "asym": [exact groups for b = 2..8], "sym": [...], "max_r": max r, "max_a": max α}
with max_r/max_a clipped at 256 (256: above 255), and "asym"/"sym" left out when all their counts are 0.
Sizes measured: 16, 32, ..., B (inside blocks), m*B for every m dividing K/B, the row ("row") and the whole
tensor ("tensor").
"""
from __future__ import annotations

from typing import Iterable

import torch

# GGML type -> (values sharing one scale/offset, code levels); K-quants: their sub-blocks, not the 256-value
# super-block
SOURCE_BLOCKS = {
    "Q4_0": (32, 16), "Q4_1": (32, 16), "Q5_0": (32, 32), "Q5_1": (32, 32), "Q8_0": (32, 256), "Q8_1": (32, 256),
    "Q2_K": (16, 4), "Q3_K": (16, 8), "Q4_K": (32, 16), "Q5_K": (32, 32), "Q6_K": (16, 64), "Q8_K": (256, 256),
}
BIG = 256            # r or α above 255: no bit width (2..8) is exact
MIN_GROUP = 16       # smallest group size measured
CHUNK = 1 << 22      # values per slice of rows (bounds the int64 copies to ~100 MB)
_ASYM = [(1 << b) - 1 for b in range(2, 9)]
_SYM = [(1 << (b - 1)) - 1 for b in range(2, 9)]


def measure_model(model, tensors: Iterable[tuple[str, str]], gguf_to_param: dict[str, str]) -> list[dict]:
    """One record per 2-D weight of the file: [(gguf name, GGML type)] mapped to the model's parameters."""
    params = dict(model.named_parameters(remove_duplicate=False))
    by_id: dict[int, list[str]] = {}
    for name, p in params.items():
        by_id.setdefault(id(p), []).append(name)   # tied weights (lm_head = embed_tokens) share one record
    out = []
    for gguf_name, qtype in tensors:
        name = gguf_to_param.get(gguf_name)
        if name is None or name not in params or params[name].dim() != 2:
            continue
        w = params[name]
        rec = {"name": name, "aliases": [n for n in by_id[id(w)] if n != name], "gguf": gguf_name,
               "type": qtype, "shape": list(w.shape), "dtype": str(w.dtype).removeprefix("torch.")}
        rec.update(measure_tensor(w.detach(), qtype))
        out.append(rec)
    return out


def measure_tensor(w: torch.Tensor, qtype: str) -> dict:
    """{"grid": {...}, "exact": {size: {...}}} for an (N, K) weight (see the module docstring)."""
    n, k = w.shape
    block, levels = SOURCE_BLOCKS.get(qtype, (32, 256))
    shift = _shift(w)
    if k % block or shift is None:
        why = f"row length {k} is not a multiple of the block {block}" if k % block else \
            "values span more than 62 bits: not representable as int64"
        return {"grid": None, "exact": None, "unmeasured": why}
    acc = _Acc(block, k, levels)
    rows = max(1, CHUNK // k)
    scale = torch.tensor(float(shift), dtype=torch.float64)
    for i in range(0, n, rows):
        acc.add(torch.ldexp(w[i:i + rows].to(torch.float64), scale).to(torch.int64))
    return acc.result()


def _shift(w: torch.Tensor) -> int | None:
    """E with every value * 2^E an integer below 2^62 (None when the tensor's range is too wide)."""
    _, e = torch.frexp(w.float())           # |x| = m * 2^e, 0.5 <= m < 1; a float32 carries 24 bits
    nz = w != 0
    if not nz.any():
        return 0
    lsb, top = int(e[nz].min()) - 24, int(e[nz].max())
    return None if top - lsb > 62 else -lsb


class _Acc:
    """Block statistics and per-size histograms of r and α (257 bins: 0..255 and BIG), over slices of rows."""

    def __init__(self, block: int, k: int, levels: int):
        self.block, self.per_row, self.levels = block, k // block, levels
        self.sub = [g for g in (block >> j for j in range(1, 8)) if g >= MIN_GROUP]
        self.multi = [m for m in range(2, self.per_row) if self.per_row % m == 0]
        self.hist: dict[tuple[str, str], torch.Tensor] = {}
        self.blocks = self.on_grid = self.zero_on_grid = self.max_span = 0
        self.tensor: list | None = None      # [min, max, unit, any block with r > 255]

    def add(self, a: torch.Tensor) -> None:
        blk = a.reshape(-1, self.block)                       # (rows * K/B, B)
        lo, hi = blk.aminmax(dim=1)
        step = _block_step(blk, lo, hi)
        unit = torch.gcd(lo.abs(), step)                      # step 0: a constant block, unit |value|
        span = torch.where(step > 0, (hi - lo) // step.clamp(min=1), 0)
        on_grid = span <= self.levels - 1
        self.blocks += blk.shape[0]
        self.on_grid += int(on_grid.sum())
        self.zero_on_grid += int((on_grid & ((step == 0) | (unit == step))).sum())   # 0 is one of its levels
        self.max_span = max(self.max_span, min(int(span.max()), BIG))
        self._inside(blk, step, unit, span)
        self._count(str(self.block), lo, hi, unit)
        self._across(lo, hi, unit)

    def _inside(self, blk, step, unit, span) -> None:
        """Groups inside a block. Exact gcds on the small codes a / unit where the block's offset is a small
        fraction of its step, and on `a` for off-grid blocks; elsewhere only constant groups can be exact."""
        if not self.sub:
            return
        den = torch.where(unit > 0, step // unit.clamp(min=1), 1)
        lattice, wide = (span <= 255) & (den <= 255), span > 255
        exact_rows = (lattice | wide).nonzero().squeeze(1)
        other_rows = (~(lattice | wide)).nonzero().squeeze(1)
        k = blk[exact_rows] // torch.where(lattice[exact_rows], unit[exact_rows], 1).clamp(min=1)[:, None]
        rest = blk[other_rows]
        for g in self.sub:
            kg = k.reshape(-1, g)
            mn, mx = kg.aminmax(dim=1)
            self._count(str(g), mn, mx, _gcd_rows(kg.abs()))
            mn, mx = rest.reshape(-1, g).aminmax(dim=1)
            const = mn == mx
            self._count(str(g), mn, mx, torch.where(const, mn.abs(), 1), ~const)

    def _across(self, lo, hi, unit) -> None:
        """Groups of m whole blocks, the row and the tensor; gcds only where every block can still be exact."""
        per = self.per_row
        lo2, hi2, un2 = lo.view(-1, per), hi.view(-1, per), unit.view(-1, per)
        r = _ratio(lo2, hi2, un2, _range)
        for m in self.multi + [per]:
            key = "row" if m == per else str(m * self.block)
            l3, h3, u3, r3 = (x.reshape(-1, m) for x in (lo2, hi2, un2, r))
            ok = (r3 < BIG).all(dim=1)
            self._count(key, l3.amin(dim=1), h3.amax(dim=1), _gcd_rows(torch.where(ok[:, None], u3, 1)), ~ok)
        ok = bool((r < BIG).all())
        part = [lo.min(), hi.max(), _gcd_rows(unit.view(1, -1))[0] if ok else torch.tensor(1), not ok]
        if self.tensor is None:
            self.tensor = part
        else:
            t = self.tensor
            self.tensor = [torch.minimum(t[0], part[0]), torch.maximum(t[1], part[1]),
                           torch.gcd(t[2], part[2]), t[3] or part[3]]

    def _count(self, key: str, mn, mx, gd, big=None) -> None:
        for name, fn in (("r", _range), ("a", _absmax)):
            v = _ratio(mn, mx, gd, fn)
            if big is not None:
                v = torch.where(big, BIG, v)
            h = torch.bincount(v.clamp(max=BIG).flatten(), minlength=BIG + 1)
            self.hist[(key, name)] = self.hist.get((key, name), 0) + h

    def result(self) -> dict:
        mn, mx, unit, big = self.tensor
        self._count("tensor", mn.view(1), mx.view(1), unit.view(1), torch.tensor([big]))
        grid = {"block": self.block, "levels": self.levels, "blocks": self.blocks, "on_grid": self.on_grid,
                "max_span": self.max_span, "zero_on_grid": self.zero_on_grid}
        exact: dict[str, dict] = {}
        for (key, name), h in self.hist.items():
            e = exact.setdefault(key, {"groups": int(h.sum())})
            counts = [_exact_count(h, n) for n in (_ASYM if name == "r" else _SYM)]
            if any(counts):                              # absent: no group is exact at any bit width
                e["asym" if name == "r" else "sym"] = counts
            e["max_r" if name == "r" else "max_a"] = int(h.nonzero().max()) if h.any() else 0
        return {"grid": grid, "exact": exact}


def _block_step(blk, lo, hi) -> torch.Tensor:
    """gcd of (a - min) per block, exact. A few columns give a multiple of it; dividing every value by the
    candidate confirms it (almost always), and blocks that fail get the full gcd. Blocks already wider than
    255 steps keep the candidate: their true span is only larger."""
    diff = blk - lo[:, None]
    rng = hi - lo
    step = rng
    for j in range(min(4, blk.shape[1])):
        step = torch.gcd(step, diff[:, j])
    check = (step > 0) & (rng // step.clamp(min=1) <= 255)
    idx = check.nonzero().squeeze(1)
    d, s = diff[idx], step[idx, None]
    # float64 division is exact enough here: quotients are <= 255, and a non-integer quotient differs from
    # every integer by >= 1/step, far above float64's rounding while step < 2^45; larger steps use remainder
    small = bool(rng.max() < (1 << 45))
    q = d.double() / s.double() if small else None
    fails = (q != q.round()).any(dim=1) if small else (torch.remainder(d, s) != 0).any(dim=1)
    bad = idx[fails]
    if bad.numel():
        full = step[bad]
        for j in range(blk.shape[1]):
            full = torch.gcd(full, diff[bad, j])
        step[bad] = full
    return step


def _gcd_rows(x: torch.Tensor) -> torch.Tensor:
    """gcd along dim 1 by halving (x >= 0)."""
    while x.shape[1] > 1:
        if x.shape[1] % 2:
            x = torch.cat([x[:, :1], torch.gcd(x[:, 1::2], x[:, 2::2])], dim=1)
        else:
            x = torch.gcd(x[:, 0::2], x[:, 1::2])
    return x[:, 0]


def _range(mn, mx):
    return mx.clamp(min=0) - mn.clamp(max=0)


def _absmax(mn, mx):
    return torch.maximum(-mn.clamp(max=0), mx.clamp(min=0))


def _ratio(mn, mx, gd, fn):
    """fn(range or max-abs) / gd; 0 for all-zero groups (gd 0)."""
    return torch.where(gd > 0, fn(mn, mx) // gd.clamp(min=1), 0)


def _exact_count(h: torch.Tensor, n: int) -> int:
    """Groups whose r (or α) is 0 or divides n."""
    return int(sum(int(h[v]) for v in range(n + 1) if v == 0 or n % v == 0))
