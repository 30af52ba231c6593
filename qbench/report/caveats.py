"""The card's Caveats (what limits how far its numbers can be trusted) and Glossary sections."""
from __future__ import annotations

from qbench.report.fmt import DASH, num
from qbench.report.index import Index
from qbench.report.timing import CONTENDED, NOISE_LIMIT, spread
from qbench.results.metrics import all_metrics
MIN_EVAL = 30     # fewer evaluation samples than this and quality intervals are called wide


def caveats(ix: Index, meta: dict, cells: list) -> list:
    """Sentences on what limits the card: emulation, baseline, noise, contention, GPU, failures, samples."""
    return [*_emulation(cells), *_runtimes(cells), *_baseline(meta), *_source(meta, cells), *_machines(meta, cells),
            *_timing(ix),
            *(s for c in cells for s in _gpu(c)), *_missing(meta, cells), *_samples(meta, cells)]


def _source(meta: dict, cells: list) -> list:
    """Models whose weights were already quantized (GGUF): the baseline is a dequantization, and a scheme
    whose grid contains the file's grid measures nothing on those weights."""
    out = []
    for name, mm in (meta.get("models") or {}).items():
        fmt = mm.get("source_format")
        if fmt:
            what = fmt.get("file_type") or "a quantized GGUF file"
            out.append(f"{name}'s weights were quantized before qbench saw them ({what}): its baseline is their "
                       "fp32 dequantization, not the original model, and every degradation is measured against "
                       "that.")
    flagged: dict = {}
    for c in cells:
        if c.get("source_grid"):
            flagged.setdefault((c.get("model"), c.get("scheme")), c["source_grid"])
    out += [f"{model} / {scheme}: {why}." for (model, scheme), why in flagged.items()]
    return out


def _runtimes(cells: list) -> list:
    """Schemes a peer runtime ran: what their numbers compare."""
    seen: dict = {}
    for c in cells:
        rt = c.get("runtime")
        if rt:
            seen.setdefault((rt.get("name"), rt.get("version"), rt.get("kv_cache")), []).append(c.get("scheme"))
    out = []
    for (name, version, kv), schemes in seen.items():
        kv_text = ("an F32 KV cache and no flash attention" if kv == "f32" else
                   "its default F16 KV cache and flash-attention choice")
        out.append(f"{', '.join(dict.fromkeys(schemes))} ran in {name} ({version}), not in qbench's engine: "
                   f"{name} requantized the baseline's own fp32 weights and ran the whole model (attention, norms, "
                   f"{kv_text}) on the same threads and token ids. Their speed-ups compare {name} with qbench's "
                   "PyTorch baseline, and their quality differences include every numeric choice of that runtime, "
                   "not only its weight format.")
    return out


def _machines(meta: dict, cells: list) -> list:
    """Cells measured on different hardware (a cluster of unlike nodes, or a run resumed elsewhere): their
    timings are not comparable with each other."""
    prints: dict = {}
    for c in cells:
        if c.get("status") in ("ok", "failed") and c.get("fingerprint"):
            prints.setdefault(c["fingerprint"], []).append(c.get("cell"))
    if len(prints) < 2:
        return []
    each = "; ".join(f"{fp}: {len(ids)} cell(s)" for fp, ids in sorted(prints.items()))
    return [f"Mixed hardware: the cells ran on {len(prints)} different hardware fingerprints ({each}); speed "
            "numbers of cells on different fingerprints are not comparable with each other."]


def _emulation(cells: list) -> list:
    emulated: dict = {}
    for c in cells:
        for k in c.get("kernels") or []:
            info = (c.get("kernel_info") or {}).get(k) or {}
            if info.get("emulated"):
                emulated.setdefault((k, info.get("backend") or DASH), []).append(c.get("scheme"))
    return [f"Kernel {k} is emulated (backend: {backend}; used by {', '.join(dict.fromkeys(schemes))}): "
            "its timings do not show what a native low-bit kernel would achieve."
            for (k, backend), schemes in emulated.items()]


def _baseline(meta: dict) -> list:
    b = meta.get("baseline") or {}
    if b.get("requested") not in (None, "", "auto", b.get("resolved")) and b.get("resolved"):  # auto is no request
        return [f"The baseline ran in {b['resolved']} instead of the requested {b['requested']}"
                + (f": {b['note']}" if b.get("note") else ".")]
    return []


def _timing(ix: Index) -> list:
    """Noisy speed rows (wide p10-p90) and a machine busy with other processes while timing."""
    out = []
    noisy = [(sp, r) for r in ix.rows if r["batch_size"] is not None
             for sp in [spread(r)] if sp is not None and sp > NOISE_LIMIT]
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
    return out


def _gpu(c: dict) -> list:
    """Throttling, a model that did not fit on the GPU, and missing NVML telemetry, for one cell."""
    out, g = [], c.get("gpu") or {}
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
    return out


def _missing(meta: dict, cells: list) -> list:
    """Cells that failed or were skipped, and planned cells with no file."""
    plan = meta.get("plan") or {}
    out = [f"Cell {c.get('cell')} {c.get('status')}: {c.get('reason') or 'no reason given'}."
           for c in cells if c.get("status") not in (None, "ok")]
    done = {c.get("cell") for c in cells}
    out += [f"Cell {sk.get('cell')} skipped: {sk.get('reason') or 'no reason given'}."
            for sk in plan.get("skipped") or [] if sk.get("cell") not in done]
    missing = [x for x in plan.get("cells") or [] if x not in done]
    if missing:
        out.append(f"{len(missing)} planned cell(s) have no results: {', '.join(missing)}.")
    return out


def _samples(meta: dict, cells: list) -> list:
    """Too few evaluation samples, and calibration samples that also appear in the evaluation set."""
    out = []
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


def glossary(rows: list) -> list:
    """One entry per metric in the rows: declared metrics in declaration order, then the others."""
    glossary_text = {m.name: m.glossary for m in all_metrics()}
    seen = list(dict.fromkeys([*glossary_text, *(r["metric"] for r in rows)]))
    out = []
    for metric in seen:
        mine = [r for r in rows if r["metric"] == metric]
        if not mine:
            continue
        out.append({"metric": metric, "unit": next((r["unit"] for r in mine if r.get("unit")), DASH),
                    "description": glossary_text.get(metric, ""),
                    "methods": list(dict.fromkeys(r["method"] for r in mine if r.get("method")))})
    return out
