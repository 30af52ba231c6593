"""The card's result tables: speed, memory, quality and decode per batch size; GPU telemetry per cell; the
realized quantization map per model x scheme."""
from __future__ import annotations

from fnmatch import fnmatchcase

from qbench.report.fmt import DASH, fmt, mib, num, sig, table, with_ci
from qbench.report.index import Index
from qbench.report.timing import NOISE_LIMIT, spread
from qbench.results.metrics import in_quality_table


def _yn(b) -> str:
    return DASH if b is None else ("yes" if b else "no")


_BQ = ("baseline", "quantized")
WEIGHT_OPS = ("linear", "lm_head", "embedding")   # quantization-map ops that hold weights (not attention, residual)


def results(ix: Index, order: dict) -> dict:
    """The Results tables: speed, memory and quality, and decode for causal LMs (only when measured)."""
    W, pairs = order["workloads"], [(m, s) for m in order["models"] for s in order["schemes"]]
    cells = [(m, s, w, bs) for m, s in pairs for w in W for bs in ix.batch_sizes(m, s, w)]
    memory = [r for m, s in pairs for r in [_memory_row(ix, W, m, s)] if r]
    decode = [r for key in cells for r in [_decode_row(ix, *key)] if r]
    out = {
        "speed": table(["Model", "Scheme", "Workload", "Batch", "Baseline ms [95% CI]", "Quantized ms [95% CI]",
                        "p10–p90 ms (baseline / quantized)", "Speedup [95% CI]",
                        "Throughput tok/s (baseline / quantized)"], [_speed_row(ix, *key) for key in cells],
                       "lllrrrrrr"),
        "memory": table(["Model", "Scheme", "Baseline weights", "Quantized weights", "Ratio",
                         "Bits per weight (baseline / quantized)", "Peak RSS (max over workloads)"], memory,
                        "llrrrrr"),
        "quality": table(["Model", "Scheme", "Metric"] + W, [r for m, s in pairs for r in _quality_rows(ix, W, m, s)],
                         "lll" + "r" * len(W)),
    }
    if decode:
        out["decode"] = table(["Model", "Scheme", "Workload", "Batch", "Baseline ms/token [95% CI]",
                               "Quantized ms/token [95% CI]", "Decode speedup [95% CI]",
                               "Decode tok/s (baseline / quantized)"], decode, "lllrrrrr")
    return out


def _speed_row(ix: Index, m, s, w, bs) -> dict:
    lb, lq = (ix.get(m, s, w, "latency_ms", v, bs) for v in _BQ)
    tb, tq = (ix.get(m, s, w, "throughput_tok_s", v, bs) for v in _BQ)
    pp = " / ".join(f"{sig(r.get('p10'))}–{sig(r.get('p90'))}" if r else DASH for r in (lb, lq))
    noisy = any((spread(r) or 0) > NOISE_LIMIT for r in (lb, lq, tb, tq) if r)
    return {"cells": [m, s, w, bs, with_ci(lb), with_ci(lq), pp + (" ⚠" if noisy else ""),
                      with_ci(ix.get(m, s, w, "speedup", "paired", bs)),
                      f"{fmt((tb or {}).get('value'))} / {fmt((tq or {}).get('value'))}"], "flag": noisy}


def _memory_row(ix: Index, W: list, m, s) -> list | None:
    wb = wq = bb = bq = None
    for w in W:
        wb = wb or ix.get(m, s, w, "weight_bytes", "baseline")
        wq = wq or ix.get(m, s, w, "weight_bytes", "quantized")
        bb = bb or ix.get(m, s, w, "bits_per_weight", "baseline")
        bq = bq or ix.get(m, s, w, "bits_per_weight", "quantized")
    rss = [num(r["value"]) for r in (ix.get(m, s, w, "peak_rss_bytes") for w in W) if r]
    rss = [x for x in rss if x is not None]
    if not (wb or wq or rss):
        return None
    b, q = num((wb or {}).get("value")), num((wq or {}).get("value"))
    bits = f"{sig(num(bb['value']))} / {sig(num(bq['value']))}" if bb and bq else DASH
    return [m, s, mib(b), mib(q), f"{b / q:.2f}x" if b and q else DASH, bits, mib(max(rss)) if rss else DASH]


def _quality_rows(ix: Index, W: list, m, s) -> list:
    """One row per (metric, variant) without a batch size that belongs to the quality table, workloads side
    by side."""
    metrics = dict.fromkeys((r["metric"], r["variant"]) for r in ix.rows
                            if (r["model"], r["scheme"]) == (m, s) and r["batch_size"] is None
                            and in_quality_table(r["metric"]))
    out = []
    for metric, variant in metrics:
        label = metric if variant in ("quantized", "paired", None) else f"{metric} ({variant})"
        out.append([m, s, label] + [with_ci(ix.get(m, s, w, metric, variant)) for w in W])
    return out


def _decode_row(ix: Index, m, s, w, bs) -> dict | None:
    db, dq = (ix.get(m, s, w, "decode_ms_per_token", v, bs) for v in _BQ)
    if not (db or dq):
        return None
    tb, tq = (ix.get(m, s, w, "decode_tok_s", v, bs) for v in _BQ)
    noisy = any((spread(r) or 0) > NOISE_LIMIT for r in (db, dq) if r)
    return {"cells": [m, s, w, bs, with_ci(db), with_ci(dq), with_ci(ix.get(m, s, w, "decode_speedup", "paired", bs)),
                      f"{fmt((tb or {}).get('value'))} / {fmt((tq or {}).get('value'))}" + (" ⚠" if noisy else "")],
            "flag": noisy}


def _whole(x) -> str:
    """Integers (°C, MHz) as they are, other numbers to 3 significant digits."""
    v = num(x)
    return str(int(v)) if v is not None and v == int(v) else sig(v)


def gpu(ix: Index, cells: list) -> dict | None:
    """One row per cell run on a CUDA device: GPU, peak memory, fit, energy, temperature, clocks, throttling."""
    rows = []
    for c in cells:
        g = c.get("gpu")
        if not g:
            continue
        b, a = g.get("before") or {}, g.get("after") or {}
        m, s, w = c.get("model"), c.get("scheme"), c.get("workload")
        bss = ix.batch_sizes(m, s, w)
        energy = DASH
        if bss:
            eb, eq = (ix.get(m, s, w, "energy_mj_per_token", v, bss[-1]) for v in ("baseline", "quantized"))
            if eb or eq:
                energy = f"{fmt((eb or {}).get('value'))} / {fmt((eq or {}).get('value'))} (batch {bss[-1]})"
        fit = g.get("fit") or {}
        pair = lambda k, unit="": f"{_whole(b.get(k))} → {_whole(a.get(k))}{unit}"  # noqa: E731
        throttled = g.get("throttled") or []
        rows.append({"cells": [c.get("cell"), b.get("name") or g.get("device") or DASH,
                               mib(g.get("max_allocated_bytes")), mib(g.get("max_reserved_bytes")),
                               _yn(fit.get("on_gpu")) if fit.get("on_gpu") is not False
                               else f"⚠ no ({fit.get('off_gpu_count')} tensors off the GPU)",
                               energy, pair("temperature_c", " °C"), pair("sm_clock_mhz", " MHz"),
                               pair("power_draw_w", " W"),
                               ", ".join(throttled) if throttled else ("none" if g.get("nvml") == "ok" else DASH)],
                     "flag": bool(throttled) or fit.get("on_gpu") is False})
    if not rows:
        return None
    return table(["Cell", "GPU", "Peak allocated", "Peak reserved", "Model on GPU",
                  "Energy mJ/token (baseline / quantized)", "Temperature before → after",
                  "SM clock before → after", "Power before → after", "Slowdowns while timed"], rows, "llrrllllll")


def quant_maps(qcells: dict, order: dict, excludes: dict | None = None) -> list:
    """One realized quantization map per model x scheme. A module the scheme's ops cover that was left at
    baseline precision is flagged, unless the scheme's own exclusion globs (excludes: scheme -> globs) keep it
    there."""
    out = []
    for m in order["models"]:
        for s in order["schemes"]:
            c = qcells.get((m, s))
            if not c:
                continue
            rows = [_quant_row(i, q, (excludes or {}).get(s) or ()) for i, q in enumerate(c["quant_map"])]
            before = sum(num(q.get("bytes_before")) or 0 for q in c["quant_map"])
            after = sum(num(q.get("bytes_after")) or 0 for q in c["quant_map"])
            applied = [q for q in c["quant_map"] if q.get("applied")]
            weights = sum(q["shape"][0] * q["shape"][1] for q in applied if len(q.get("shape") or ()) == 2
                          and q.get("op") in WEIGHT_OPS)
            out.append({
                "model": m, "scheme": s, "cell": c["cell"], "mismatches": sum(r["flag"] for r in rows),
                "total": len(rows), "applied": sum(1 for q in c["quant_map"] if q.get("applied")),
                "bytes": f"{mib(before)} → {mib(after)}",
                "bits_per_weight": (f"{sig(8 * sum(num(q.get('bytes_after')) or 0 for q in applied) / weights)}"
                                    if weights else DASH),
                "warnings": [f"exclusion glob '{g}' matched no module" for g in c.get("unmatched_excludes") or []],
                "table": table(["#", "Module", "Op", "Shape", "Applied", "Reason", "Kernel", "Weights",
                                "Activations", "SQNR dB"], rows, "rlllllllllr"[:10]),
            })
    return out


def _quant_row(i: int, q: dict, excludes) -> dict:
    excluded = any(fnmatchcase(str(q.get("name")), g) for g in excludes) or \
        str(q.get("reason") or "").startswith("skipped by override")
    miss = bool(q.get("requested")) and not q.get("applied") and not excluded
    applied = "⚠ no" if miss else _yn(q.get("applied"))
    reason = q.get("reason") or (f"override '{q['override']}'" if q.get("override") else "")
    return {"cells": [i, q.get("name"), q.get("op"), "×".join(str(d) for d in q.get("shape") or []) or DASH,
                      applied, reason, q.get("kernel") or DASH, q.get("weights") or DASH,
                      q.get("activations") or DASH, fmt(q.get("sqnr_db"))], "flag": miss}
