"""How the card writes numbers, intervals, dates and tables (plain data, no torch).

Each metric's display format comes from its declaration in the metric registry (qbench.results.metrics).
"""
from __future__ import annotations

import math
from datetime import datetime

from qbench.results.metrics import declared, metric

DASH = "—"


def num(x):
    """A finite float, or None (NaN, inf, missing and non-numbers all become None)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def sig(x, digits: int = 3) -> str:
    x = num(x)
    if x is None:
        return DASH
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    s = f"{x:#.{digits}g}"
    return s if "e" in s else s.rstrip(".")


def mib(x) -> str:
    return DASH if num(x) is None else f"{sig(num(x) / 2 ** 20)} MiB"


def fmt(x, metric_name: str | None = None) -> str:
    """A value as the card shows it, in its metric's declared display format (3 significant digits if none)."""
    if num(x) is None:
        return DASH
    display = metric(metric_name).display if declared(metric_name) else "sig"
    if display == "fixed4":
        return f"{num(x):.4f}"
    if display == "ratio":
        return f"{num(x):.2f}x"
    if display == "bytes":
        return mib(x)
    return sig(x)


def with_ci(row, metric_name: str | None = None) -> str:
    """'value [ci_low, ci_high]' of a row (only the value when it has no interval), or a dash."""
    if not row or num(row.get("value")) is None:
        return DASH
    m = metric_name or row.get("metric")
    out = fmt(row["value"], m)
    if num(row.get("ci_low")) is not None and num(row.get("ci_high")) is not None:
        out += f" [{fmt(row['ci_low'], m).rstrip('x')}, {fmt(row['ci_high'], m).rstrip('x')}]"
    return out


def when(s) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS+00:00'; anything else as it is (a dash when empty)."""
    try:
        return datetime.fromisoformat(s).isoformat(sep=" ", timespec="seconds")
    except (TypeError, ValueError):
        return s or DASH


def table(columns, rows, align=None) -> dict:
    """A card table: {"columns", "align", "rows": [{"cells": [str], "flag": bool}]}; rows are lists or
    {"cells", "flag"} dicts."""
    rows = [r if isinstance(r, dict) else {"cells": r, "flag": False} for r in rows]
    return {"columns": list(columns), "align": align or "l" * len(columns),
            "rows": [{"cells": [str(c) for c in r["cells"]], "flag": bool(r["flag"])} for r in rows]}
