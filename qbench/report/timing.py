"""How far a timing can be trusted: a machine busy with other processes while a cell was timed (contended),
and a timing whose repeats scattered widely (noisy). The card, compare and the gates read the same rules.

A cell records `foreign_cpu_cores`: the CPU cores other processes kept busy, on average, while it was timed.
Above CONTENDED the cell's timings include that interference; above NOISE_LIMIT the p10-p90 spread of a
timing, relative to its median, says its repeats disagree. Either way a change in that number cannot be
attributed to the code that ran.
"""
from __future__ import annotations

from qbench.report.fmt import num

CONTENDED = 0.25     # foreign CPU cores while timing above which a cell is flagged
NOISE_LIMIT = 0.25   # p10-p90 spread of a timing, relative to its median, above which it is flagged noisy


def spread(r):
    """(p90 − p10) / value of a timing row, or None."""
    v, lo, hi = (num(r.get(k)) for k in ("value", "p10", "p90"))
    return None if None in (v, lo, hi) or v == 0 else (hi - lo) / v


def contention(rows: list) -> dict:
    """{cell id: foreign CPU cores while it was timed} for every cell that recorded it."""
    out = {}
    for r in rows:
        if r.get("metric") == "foreign_cpu_cores" and num(r.get("value")) is not None:
            out[r.get("cell")] = num(r["value"])
    return out


def contended(cores: dict, cell) -> float | None:
    """The foreign cores of a contended cell, None when the cell was quiet (or did not say)."""
    c = cores.get(cell)
    return c if c is not None and c > CONTENDED else None


def doubts(cores: dict, *rows) -> list[str]:
    """Why the timing rows (of one comparison) cannot be attributed to the code: contended cells, noisy
    repeats; [] when they can. A row is skipped when None."""
    out = []
    for r in (r for r in rows if r):
        c = contended(cores, r.get("cell"))
        if c is not None:
            out.append(f"contended ({c:.2f} cores busy)")
        sp = spread(r)
        if sp is not None and sp > NOISE_LIMIT:
            out.append(f"noisy (p10–p90 {sp:.0%})")
    return list(dict.fromkeys(out))
