"""The card's sections, each built from results rows and meta as plain data."""
from __future__ import annotations

import re

from qbench.report.fmt import (CONTENDED, DASH, GLOSSARY, MIN_EVAL, NOISE_LIMIT, PRIMARY, SIZE_METRICS, Index,
                               fmt, mib, num, sig, table, with_ci)
from qbench.report.gates import gates_failed, gates_verdict, status_text

def summary(ix: Index, order: dict, cells: list) -> list:
    out = []
    for m in order["models"]:
        for s in order["schemes"]:
            mine = [c for c in cells if (c.get("model"), c.get("scheme")) == (m, s)]
            if not mine:
                continue
            parts, tail = [], ""
            sw = ix.speed_workload(m, s, order["workloads"])
            bs = ix.batch_sizes(m, s, sw)[-1] if sw else None
            sp = ix.get(m, s, sw, "speedup", "paired", bs) if sw else None
            if sp and num(sp["value"]):
                v, ci = num(sp["value"]), ""
                if num(sp["ci_low"]) is not None and num(sp["ci_high"]) is not None:
                    ci = f" (95% CI {num(sp['ci_low']):.2f}-{num(sp['ci_high']):.2f})"
                where = f" at batch {bs}" + (f" on {sw}" if len(order["workloads"]) > 1 else "")
                lo, hi = num(sp["ci_low"]), num(sp["ci_high"])
                if lo is not None and hi is not None and lo <= 1 <= hi:
                    parts.append(f"no clear speed change ({v:.2f}x{where}{ci})")
                else:
                    parts.append(f"{v:.2f}x faster{where}{ci}" if v >= 1
                                 else f"{v:.2f}x the baseline speed (slower){where}{ci}")
            for w in order["workloads"]:
                wb, wq = (ix.get(m, s, w, "weight_bytes", v) for v in ("baseline", "quantized"))
                if wb and wq and num(wb["value"]) and num(wq["value"]):
                    r = num(wb["value"]) / num(wq["value"])
                    parts.append(f"weights {r:.1f}x smaller" if r >= 1 else f"weights {1 / r:.1f}x larger")
                    break
            task = next((c.get("task") for c in mine if c.get("task")), None)
            metric, label = PRIMARY.get(task, (None, None))
            qual = [(w, ix.get(m, s, w, metric)) for w in order["workloads"]] if metric else []
            qual = [(w, r) for w, r in qual if r and num(r["value"]) is not None]
            for w, r in qual:
                parts.append(f"{w} {label} {fmt(r['value'], metric)}")
            if len(qual) >= 2:  # the same test as the contrast section: the difference's interval
                (wa, ra), (wb, rb) = qual[0], qual[1]
                worse = next(f for mt, _, f in CONTRAST.get(task, ()) if mt == metric)
                verdict = _verdict(wa, wb, ra, rb, worse)[1]
                tail = (f" — {verdict}" if "degrades more" in verdict
                        else f" — {wa} vs {wb}: not distinguishable at this sample size")
            if not parts:
                why = "; ".join(f"{c.get('workload')}: {c.get('status')} ({c.get('reason') or 'no reason'})"
                                for c in mine if c.get("status") != "ok")
                parts.append("no results" + (f" ({why})" if why else ""))
            out.append({"model": m, "scheme": s, "text": f"{s} on {m}: {', '.join(parts)}{tail}."})
    return out


# degradation metrics compared across workloads: (metric, label, turns a value into "how much worse")
CONTRAST = {"encoder": (("cosine_mean", "1 − cosine", lambda v: 1 - v),),
            "causal_lm": (("log_ppl_ratio", "log-PPL ratio", lambda v: v), ("kl_mean", "KL mean", lambda v: v))}
Z95 = 1.959963984540054


def contrast(ix: Index, order: dict, cells: list) -> dict | None:
    """Text vs code: which workload degrades more, by how much, with intervals; None with one workload."""
    W = order["workloads"]
    if len(W) < 2:
        return None
    a, b = ("text", "code") if {"text", "code"} <= set(W) else (W[0], W[1])
    rows = []
    for m in order["models"]:
        task = next((c.get("task") for c in cells if c.get("model") == m and c.get("task")), None)
        for s in order["schemes"]:
            for metric, label, worse in CONTRAST.get(task, ()):
                ra, rb = ix.get(m, s, a, metric), ix.get(m, s, b, metric)
                if not (ra and rb) or None in (num(ra["value"]), num(rb["value"])):
                    continue
                shown = [_degr(worse, r) for r in (ra, rb)]
                diff_s, verdict = _verdict(a, b, ra, rb, worse)
                rows.append({"cells": [m, s, label, shown[0], shown[1], diff_s, verdict],
                             "flag": "degrades more" in verdict})
    if not rows:
        return None
    return {"workloads": [a, b],
            "note": f"Degradation per workload, value [95% CI]: 1 − cosine for encoders, log(PPL ratio) and mean "
                    f"KL for causal LMs (0 = no change, higher = worse). Difference = {b} − {a}; its interval "
                    "treats the two workloads as independent samples (normal approximation from each 95% CI). "
                    "A workload degrades more only when that interval excludes 0.",
            "table": table(["Model", "Scheme", "Degradation", a, b, f"{b} − {a} [95% CI]", "Verdict"], rows,
                           "lllrrrl")}


def _verdict(a: str, b: str, ra: dict, rb: dict, worse) -> tuple[str, str]:
    """(b − a degradation difference [95% CI] as text, verdict): which workload degrades more, if any."""
    da, db = worse(num(ra["value"])), worse(num(rb["value"]))
    diff, half = db - da, None
    cis = [(num(r.get("ci_low")), num(r.get("ci_high"))) for r in (ra, rb)]
    if all(None not in ci for ci in cis):
        se = [(hi - lo) / (2 * Z95) for lo, hi in cis]
        half = Z95 * (se[0] ** 2 + se[1] ** 2) ** 0.5
    diff_s = sig(diff) + (f" [{sig(diff - half)}, {sig(diff + half)}]" if half is not None else "")
    if half is None:
        return diff_s, "no interval"
    if abs(diff) <= half:
        return diff_s, "not distinguishable"
    more, less, dm, dl = (b, a, db, da) if diff > 0 else (a, b, da, db)
    return diff_s, f"{more} degrades more" + (f" ({dm / dl:.1f}x {less})" if dl > 0 else "")


def _degr(worse, r) -> str:
    v, lo, hi = (num(r.get(k)) for k in ("value", "ci_low", "ci_high"))
    out = sig(worse(v))
    if lo is not None and hi is not None:
        lo, hi = sorted((worse(lo), worse(hi)))
        out += f" [{sig(lo)}, {sig(hi)}]"
    return out


def gates(verdicts: list) -> dict | None:
    """The Gates section: overall verdict and one table row per gate; None when there are no gates."""
    if not verdicts:
        return None
    rows = [{"cells": [v["index"] + 1, v["name"] or DASH, v["check"], v["applies_to"], v["matched"],
                       v["worst_text"], status_text(v["status"]), v["detail"]],
             "flag": v["status"] != "pass"} for v in verdicts]
    return {"failed": gates_failed(verdicts), "verdict": gates_verdict(verdicts),
            "table": table(["#", "Gate", "Check", "Applies to", "Rows", "Worst", "Status", "Detail"],
                           rows, "rlllrrll")}


def _yn(b) -> str:
    return DASH if b is None else ("yes" if b else "no")


def setup(meta: dict, cells: list, order: dict) -> dict:
    exp, rows = meta.get("experiment") or {}, []
    for sc in exp.get("schemes", []):
        w, a, cal = sc.get("weights") or {}, sc.get("activations"), sc.get("calibration")
        mine = [c for c in cells if c.get("scheme") == sc.get("name")]
        kernels = list(dict.fromkeys(k for c in mine for k in c.get("kernels") or []))
        info = {k: v for c in mine for k, v in (c.get("kernel_info") or {}).items()}
        emulated = [k for k in kernels if (info.get(k) or {}).get("emulated")]
        gran = w.get("granularity", DASH) + (f" ({w['group_size']})" if w.get("group_size") else "")
        act = "weight-only" if not a else " ".join([
            f"{a.get('bits')}-bit", "signed" if a.get("signed") else "unsigned",
            "sym" if a.get("symmetric") else "asym", str(a.get("granularity")),
            "dynamic" if a.get("dynamic") else "static"])
        if cal:
            got = next((c["calibration"] for c in mine if c.get("calibration")), None) or {}
            bits = [str(cal.get("dataset")), f"{cal.get('size')} samples", str(cal.get("method"))]
            if got.get("hash"):
                bits.append(f"hash {str(got['hash'])[:8]}")
            ov = got.get("overlap_with_eval")
            bits.append("overlap not checked" if ov is None else
                        "no overlap with eval" if ov == 0 else f"⚠ {ov} samples overlap eval")
            cal_s = ", ".join(bits)
        else:
            cal_s = "none (dynamic)" if a else "none (weight-only)"
        rows.append([sc.get("name"), w.get("bits", DASH), "signed" if w.get("signed") else "unsigned",
                     "sym" if w.get("symmetric") else "asym", gran, act, ", ".join(sc.get("ops") or []),
                     ", ".join(sc.get("exclude") or []) or "none", cal_s,
                     ", ".join(kernels) or DASH,
                     (f"yes ({', '.join(emulated)})" if emulated else "no") if kernels else DASH])
    ms = exp.get("measure") or {}
    measure = [["Batch sizes", ", ".join(str(b) for b in ms.get("batch_sizes") or []) or DASH]] + [
        [label, DASH if ms.get(k) is None else ms[k]] for label, k in (
            ("Sequence length (tokens)", "seq_len"), ("Warmup runs", "warmup"),
            ("Timed repeats", "repeats"), ("Eval samples", "eval_samples"),
            ("Threads", "threads"), ("Seed", "seed"))]
    models = []
    for name in order["models"]:
        mm = (meta.get("models") or {}).get(name) or {}
        p = num(mm.get("params"))
        refs = mm.get("lm_reference") or {}
        ref_s = DASH
        if refs:
            r0 = next(iter(refs.values()))
            how = sorted({"reused from cache" if r.get("cache") == "hit" else "computed" for r in refs.values()})
            ref_s = f"top-{r0.get('k')} of {r0.get('vocab')} tokens per position, {' / '.join(how)}"
        models.append([name, mm.get("id", DASH), mm.get("task", DASH),
                       DASH if p is None else f"{sig(p / 1e6)}M", mm.get("source_origin") or DASH, ref_s])
    workloads = []
    for wl in exp.get("workloads", []):
        ev = next((c["evaluation"] for c in cells
                   if c.get("workload") == wl.get("name") and c.get("evaluation")), None) or {}
        workloads.append([wl.get("name"), wl.get("dataset"), ev.get("n", DASH),
                          str(ev.get("hash") or DASH)[:8]])
    b = meta.get("baseline") or {}
    return {
        "schemes": table(["Scheme", "Bits", "Signed", "Symmetry", "Granularity", "Activations", "Ops",
                          "Exclusions", "Calibration", "Kernel(s)", "Emulated"], rows),
        "baseline": {"requested": b.get("requested") or (exp.get("baseline") or {}).get("dtype") or DASH,
                     "resolved": b.get("resolved") or DASH, "note": b.get("note") or ""},
        "measure": table(["Setting", "Value"], measure, "lr"),
        "models": table(["Model", "Id", "Task", "Parameters", "Source", "Baseline reference (causal LMs)"], models,
                        "lllrll"),
        "workloads": table(["Workload", "Dataset", "Eval samples", "Eval hash"], workloads, "llrl"),
    }


def hardware(meta: dict) -> dict:
    hw = meta.get("hardware") or {}
    gib = num(hw.get("ram_bytes"))
    freq = [sig(f) for f in hw.get("cpu_freq_mhz") or []]
    gpus = []
    for g in hw.get("gpus") or []:
        extra = [f"{num(g['memory_bytes']) / 2 ** 30:.1f} GiB" if num(g.get("memory_bytes")) else None,
                 *(f"{label} {g[k]}" if g.get(k) is not None else None for label, k in (
                     ("driver", "driver"), ("CUDA", "cuda_runtime"), ("compute capability", "compute_capability"))),
                 f"{sig(g['power_limit_w'])} W limit" if num(g.get("power_limit_w")) else None,
                 f"SM/mem clock {sig(g.get('sm_clock_mhz'))}/{sig(g.get('mem_clock_mhz'))} MHz"
                 if g.get("sm_clock_mhz") or g.get("mem_clock_mhz") else None]
        extra = ", ".join(e for e in extra if e)
        gpus.append(f"#{g.get('index')} {g.get('name')}" + (f" ({extra})" if extra else ""))
    items = [
        ("CPU", f"{hw.get('cpu_model') or DASH} ({hw.get('cpu_arch') or DASH})"),
        ("Cores", f"{hw.get('physical_cores') or DASH} physical / {hw.get('logical_cores') or DASH} logical"),
        ("CPU frequency (current / max MHz)", " / ".join(freq) or DASH),
        ("CPU governor", hw.get("cpu_governor") or DASH),
        ("RAM", DASH if gib is None else f"{gib / 2 ** 30:.1f} GiB"),
        ("ISA flags", ", ".join(hw.get("cpu_flags") or []) or "none detected"),
        ("GPU(s)", "; ".join(gpus) or "none"),
        ("OS", hw.get("os") or DASH),
        ("Python", hw.get("python") or DASH),
        ("Packages", ", ".join(f"{k} {v}" for k, v in (hw.get("packages") or {}).items()) or DASH),
        ("torch threads", hw.get("torch_threads") or DASH),
        ("torch CPU capability", hw.get("torch_cpu_capability") or DASH),
        ("Device used", meta.get("device") or DASH),
        ("git commit", meta.get("git_commit") or "unknown"),
        ("qbench version", meta.get("qbench_version") or DASH),
    ]
    return table(["Item", "Value"], [list(i) for i in items])


def _spread(r):
    v, lo, hi = (num(r.get(k)) for k in ("value", "p10", "p90"))
    return None if None in (v, lo, hi) or v == 0 else (hi - lo) / v


def results(ix: Index, order: dict) -> dict:
    speed, memory, quality = [], [], []
    W = order["workloads"]
    for m in order["models"]:
        for s in order["schemes"]:
            for w in W:
                for bs in ix.batch_sizes(m, s, w):
                    lb, lq = (ix.get(m, s, w, "latency_ms", v, bs) for v in ("baseline", "quantized"))
                    tb, tq = (ix.get(m, s, w, "throughput_tok_s", v, bs) for v in ("baseline", "quantized"))
                    pp = " / ".join(f"{sig(r.get('p10'))}–{sig(r.get('p90'))}" if r else DASH for r in (lb, lq))
                    noisy = any((_spread(r) or 0) > NOISE_LIMIT for r in (lb, lq, tb, tq) if r)
                    speed.append({"cells": [m, s, w, bs, with_ci(lb), with_ci(lq), pp + (" ⚠" if noisy else ""),
                                            with_ci(ix.get(m, s, w, "speedup", "paired", bs)),
                                            f"{fmt((tb or {}).get('value'))} / {fmt((tq or {}).get('value'))}"],
                                  "flag": noisy})
            wb = wq = None
            for w in W:
                wb = wb or ix.get(m, s, w, "weight_bytes", "baseline")
                wq = wq or ix.get(m, s, w, "weight_bytes", "quantized")
            rss = [num(r["value"]) for r in (ix.get(m, s, w, "peak_rss_bytes") for w in W) if r]
            rss = [x for x in rss if x is not None]
            if wb or wq or rss:
                b, q = num((wb or {}).get("value")), num((wq or {}).get("value"))
                memory.append([m, s, mib(b), mib(q), f"{b / q:.2f}x" if b and q else DASH,
                               mib(max(rss)) if rss else DASH])
            metrics = list(dict.fromkeys(
                (r["metric"], r["variant"]) for r in ix.rows
                if (r["model"], r["scheme"]) == (m, s) and r["batch_size"] is None
                and r["metric"] not in SIZE_METRICS + ("foreign_cpu_cores",)))
            for metric, variant in metrics:
                label = metric if variant in ("quantized", "paired", None) else f"{metric} ({variant})"
                quality.append([m, s, label] + [with_ci(ix.get(m, s, w, metric, variant)) for w in W])
    decode = []
    for m in order["models"]:
        for s in order["schemes"]:
            for w in W:
                for bs in ix.batch_sizes(m, s, w):
                    db, dq = (ix.get(m, s, w, "decode_ms_per_token", v, bs) for v in ("baseline", "quantized"))
                    if not (db or dq):
                        continue
                    tb, tq = (ix.get(m, s, w, "decode_tok_s", v, bs) for v in ("baseline", "quantized"))
                    noisy = any((_spread(r) or 0) > NOISE_LIMIT for r in (db, dq) if r)
                    decode.append({"cells": [m, s, w, bs, with_ci(db), with_ci(dq),
                                             with_ci(ix.get(m, s, w, "decode_speedup", "paired", bs)),
                                             f"{fmt((tb or {}).get('value'))} / {fmt((tq or {}).get('value'))}"
                                             + (" ⚠" if noisy else "")], "flag": noisy})
    out = {
        "speed": table(["Model", "Scheme", "Workload", "Batch", "Baseline ms [95% CI]", "Quantized ms [95% CI]",
                        "p10–p90 ms (baseline / quantized)", "Speedup [95% CI]",
                        "Throughput tok/s (baseline / quantized)"], speed, "lllrrrrrr"),
        "memory": table(["Model", "Scheme", "Baseline weights", "Quantized weights", "Ratio",
                         "Peak RSS (max over workloads)"], memory, "llrrrr"),
        "quality": table(["Model", "Scheme", "Metric"] + W, quality, "lll" + "r" * len(W)),
    }
    if decode:
        out["decode"] = table(["Model", "Scheme", "Workload", "Batch", "Baseline ms/token [95% CI]",
                               "Quantized ms/token [95% CI]", "Decode speedup [95% CI]",
                               "Decode tok/s (baseline / quantized)"], decode, "lllrrrrr")
    return out


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
        b, a, t = g.get("before") or {}, g.get("after") or {}, g.get("while_timed") or {}
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


def quant_maps(qcells: dict, order: dict) -> list:
    out = []
    for m in order["models"]:
        for s in order["schemes"]:
            c = qcells.get((m, s))
            if not c:
                continue
            rows, bad = [], 0
            for i, q in enumerate(c["quant_map"]):
                miss = bool(q.get("requested")) and not q.get("applied")
                bad += miss
                applied = "⚠ no" if miss else _yn(q.get("applied"))
                rows.append({"cells": [i, q.get("name"), q.get("op"), "×".join(str(d) for d in q.get("shape") or [])
                                       or DASH, applied, q.get("reason") or "", q.get("kernel") or DASH,
                                       q.get("weights") or DASH, q.get("activations") or DASH,
                                       fmt(q.get("sqnr_db"))], "flag": miss})
            before = sum(num(q.get("bytes_before")) or 0 for q in c["quant_map"])
            after = sum(num(q.get("bytes_after")) or 0 for q in c["quant_map"])
            out.append({
                "model": m, "scheme": s, "cell": c["cell"], "mismatches": bad, "total": len(rows),
                "applied": sum(1 for q in c["quant_map"] if q.get("applied")),
                "bytes": f"{mib(before)} → {mib(after)}",
                "warnings": [f"exclusion glob '{g}' matched no module" for g in c.get("unmatched_excludes") or []],
                "table": table(["#", "Module", "Op", "Shape", "Applied", "Reason", "Kernel", "Weights",
                                "Activations", "SQNR dB"], rows, "rlllllllllr"[:10]),
            })
    return out


def caveats(ix: Index, meta: dict, cells: list) -> list:
    out = []
    emulated = {}
    for c in cells:
        for k in c.get("kernels") or []:
            info = (c.get("kernel_info") or {}).get(k) or {}
            if info.get("emulated"):
                emulated.setdefault((k, info.get("backend") or DASH), []).append(c.get("scheme"))
    for (k, backend), schemes in emulated.items():
        out.append(f"Kernel {k} is emulated (backend: {backend}; used by {', '.join(dict.fromkeys(schemes))}): "
                   "its timings do not show what a native low-bit kernel would achieve.")
    b = meta.get("baseline") or {}
    if b.get("requested") and b.get("resolved") and b["requested"] != b["resolved"]:
        out.append(f"The baseline ran in {b['resolved']} instead of the requested {b['requested']}"
                   + (f": {b['note']}" if b.get("note") else "."))
    noisy = [(sp, r) for r in ix.rows if r["batch_size"] is not None
             for sp in [_spread(r)] if sp is not None and sp > NOISE_LIMIT]
    if noisy:
        sp, r = max(noisy, key=lambda x: x[0])
        out.append(f"Noisy timings: {len(noisy)} speed row(s) have a p10–p90 spread above "
                   f"{NOISE_LIMIT:.0%} of the median (worst: {r['model']} / {r['scheme']} / {r['workload']}, "
                   f"batch {r['batch_size']}, {r['variant']} {r['metric']}: {sp:.0%}).")
    busy = [r for r in ix.rows if r["metric"] == "foreign_cpu_cores" and (num(r["value"]) or 0) > CONTENDED]
    if busy:
        worst = max(busy, key=lambda r: r["value"])
        out.append(f"Contended machine: other processes kept {worst['value']:.2f} CPU cores busy on average "
                   f"while {worst['cell']} was timed ({len(busy)} cell(s) above {CONTENDED} cores); its "
                   "timings include that interference.")
    for c in cells:
        g = c.get("gpu") or {}
        if g.get("throttled"):
            t = g.get("while_timed") or {}
            extra = [f"max {t['max_temperature_c']} °C" if t.get("max_temperature_c") is not None else None,
                     f"SM clock down to {t['min_sm_clock_mhz']} MHz" if t.get("min_sm_clock_mhz") is not None
                     else None]
            extra = "; ".join(e for e in extra if e)
            out.append(f"GPU throttled while {c.get('cell')} ran ({', '.join(g['throttled'])}"
                       + (f"; {extra}" if extra else "") + "): its timings and energy reflect reduced clocks.")
        if (g.get("fit") or {}).get("on_gpu") is False:
            off = g["fit"]
            out.append(f"Cell {c.get('cell')}: {off.get('off_gpu_count')} model tensor(s) were not on the GPU "
                       f"(first: {', '.join((off.get('off_gpu') or [])[:3])}): the model did not fit or was "
                       "offloaded, so a speed difference may come from fitting versus spilling.")
        if g and g.get("nvml") != "ok":
            out.append(f"Cell {c.get('cell')} ran on {g.get('device')} without NVML telemetry "
                       f"({g.get('nvml')}): throttling and energy were not recorded.")
    for c in cells:
        if c.get("status") not in (None, "ok"):
            out.append(f"Cell {c.get('cell')} {c.get('status')}: {c.get('reason') or 'no reason given'}.")
    for sk in (meta.get("plan") or {}).get("skipped") or []:
        if not any(c.get("cell") == sk.get("cell") for c in cells):
            out.append(f"Cell {sk.get('cell')} skipped: {sk.get('reason') or 'no reason given'}.")
    done = {c.get("cell") for c in cells}
    missing = [x for x in (meta.get("plan") or {}).get("cells") or [] if x not in done]
    if missing:
        out.append(f"{len(missing)} planned cell(s) have no results: {', '.join(missing)}.")
    ns = {(c.get("evaluation") or {}).get("n") for c in cells if c.get("evaluation")}
    ns = sorted(n for n in ns if num(n) is not None)
    if not ns:
        ns = [n for n in [((meta.get("experiment") or {}).get("measure") or {}).get("eval_samples")] if n]
    if ns and ns[0] < MIN_EVAL:
        out.append(f"Only {ns[0]} evaluation samples (fewer than {MIN_EVAL}): quality intervals are wide "
                   "and small differences are not meaningful.")
    for c in cells:
        ov = (c.get("calibration") or {}).get("overlap_with_eval")
        if num(ov):
            out.append(f"Cell {c.get('cell')}: {ov} calibration samples also appear in the evaluation set.")
    return out


def reproduce(meta: dict) -> dict:
    import yaml

    text = yaml.safe_dump(meta.get("experiment") or {}, sort_keys=False, allow_unicode=True)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return {"command": meta.get("command") or DASH, "experiment_file": meta.get("experiment_file") or DASH,
            "yaml": text, "fence": "`" * max(3, longest + 1)}


def glossary(rows: list) -> list:
    seen = list(dict.fromkeys([*GLOSSARY, *(r["metric"] for r in rows)]))
    out = []
    for metric in seen:
        mine = [r for r in rows if r["metric"] == metric]
        if not mine:
            continue
        out.append({"metric": metric, "unit": next((r["unit"] for r in mine if r.get("unit")), DASH),
                    "description": GLOSSARY.get(metric, ""),
                    "methods": list(dict.fromkeys(r["method"] for r in mine if r.get("method")))})
    return out
