"""The card's Setup, Hardware and Reproduce sections: what ran, where, and how to run it again."""
from __future__ import annotations

import re

from qbench.report.fmt import DASH, num, sig, table


def setup(meta: dict, cells: list, order: dict) -> dict:
    """The Setup section: schemes as configured and as they ran, baseline, measurement settings, models and
    workloads."""
    exp = meta.get("experiment") or {}
    ms = exp.get("measure") or {}
    measure = [["Batch sizes", ", ".join(str(b) for b in ms.get("batch_sizes") or []) or DASH]] + [
        [label, DASH if ms.get(k) is None else ms[k]] for label, k in (
            ("Sequence length (tokens)", "seq_len"), ("Warmup runs", "warmup"),
            ("Timed repeats", "repeats"), ("Eval samples", "eval_samples"),
            ("Threads", "threads"), ("Seed", "seed"))]
    if ms.get("speedup_ci_width"):
        measure[3][1] = _adaptive_repeats(ms, cells)
    lm = _lm_forward(ms, cells)
    if lm:
        measure.append(["Causal LM prefill and decode", lm])
    b = meta.get("baseline") or {}
    return {
        "schemes": table(["Scheme", "Bits", "Signed", "Symmetry", "Granularity", "Activations", "Ops",
                          "Exclusions", "Calibration", "Method", "Kernel(s)", "Emulated"],
                         [_scheme_row(sc, cells) for sc in exp.get("schemes", [])]),
        "baseline": {"requested": b.get("requested") or (exp.get("baseline") or {}).get("dtype") or DASH,
                     "resolved": b.get("resolved") or DASH, "note": b.get("note") or ""},
        "measure": table(["Setting", "Value"], measure, "lr"),
        "models": table(["Model", "Id", "Task", "Parameters", "Source", "Baseline reference (causal LMs)"],
                        [_model_row(meta, name) for name in order["models"]], "lllrll"),
        "workloads": table(["Workload", "Dataset", "Eval samples", "Eval hash"],
                           [_workload_row(wl, cells) for wl in exp.get("workloads", [])], "llrl"),
    }


def _lm_forward(ms: dict, cells: list) -> str:
    """How the causal LMs' prefill and decode ran (measure.lm_forward), with the pairs that could not run that way
    (their rows say why); "" when no cell timed a decode."""
    how = [r.get("method") or "" for c in cells for r in c.get("rows") or []
           if r.get("metric") == "decode_ms_per_token" and r.get("variant") == "quantized"]
    if not how:
        return ""
    if ms.get("lm_forward", "transformers") != "qbench":
        return "the model's own forward (transformers) with its KV cache, both sides (measure.lm_forward)"
    own = sum("does not run this pair" in h for h in how)
    text = ("qbench's decoder forward for both sides of each speed-up (measure.lm_forward: qbench; the model's own "
            "modules, kernels and weights; its float work, and the sibling projections it runs as one call, as each "
            "timing row says)")
    return text + (f"; {own} of {len(how)} timings through the model's own forward instead (their rows say why)"
                   if own else "")


def _adaptive_repeats(ms: dict, cells: list) -> str:
    """The Timed repeats cell of an adaptive run: the rule, and the repeats its speed-ups took."""
    taken = sorted(int(r["n"]) for c in cells for r in c.get("rows") or []
                   if r.get("metric") in ("speedup", "decode_speedup") and r.get("n"))
    rule = (f"adaptive: until the speed-up's 95% CI is narrower than {ms['speedup_ci_width']:g} of it, at most "
            f"{ms.get('repeats')}")
    if not taken:
        return rule
    return f"{rule}; taken: {taken[0]}-{taken[-1]} (median {taken[len(taken) // 2]}) over {len(taken)} speed-ups"


def _scheme_row(sc: dict, cells: list) -> list:
    w, a, cal = sc.get("weights") or {}, sc.get("activations"), sc.get("calibration")
    mine = [c for c in cells if c.get("scheme") == sc.get("name")]
    if sc.get("runtime"):
        return _runtime_row(sc, mine)
    kernels = list(dict.fromkeys(k for c in mine for k in c.get("kernels") or []))
    info = {k: v for c in mine for k, v in (c.get("kernel_info") or {}).items()}
    emulated = [k for k in kernels if (info.get(k) or {}).get("emulated")]
    gran = w.get("granularity", DASH) + (f" ({w['group_size']})" if w.get("group_size") else "")
    act = "weight-only" if not a else " ".join([
        f"{a.get('bits')}-bit", "signed" if a.get("signed") else "unsigned",
        "sym" if a.get("symmetric") else "asym", str(a.get("granularity")),
        "dynamic" if a.get("dynamic") else "static"])
    fmt = w.get("format")
    if fmt:                      # a value table (nf4, fp8_e4m3, fp4_e2m1): no integer signedness or symmetry
        bits, signed, sym = fmt, DASH, DASH
    else:
        bits, signed, sym = (w.get("bits", DASH), "signed" if w.get("signed") else "unsigned",
                             "sym" if w.get("symmetric") else "asym")
    return [sc.get("name"), bits, signed, sym, gran, act, ", ".join(sc.get("ops") or []),
            ", ".join(sc.get("exclude") or []) or "none", _calibration_text(cal, a, mine, sc),
            _method_text(sc.get("method") or {}, mine), ", ".join(kernels) or DASH,
            (f"yes ({', '.join(emulated)})" if emulated else "no") if kernels else DASH]


def _runtime_row(sc: dict, mine: list) -> list:
    """A scheme a peer runtime quantized and ran: its file type, the tensor types it chose, what its matmuls
    do to activations (from the quantization map the cells recorded)."""
    rt = sc["runtime"]
    got = next((c for c in mine if c.get("runtime")), None) or {}
    info = got.get("runtime") or {}
    types = ", ".join(f"{t} x{n}" for t, n in (info.get("tensor_types") or {}).items()) or DASH
    acts = sorted({q.get("activations") for q in got.get("quant_map") or [] if q.get("op") != "embedding"})
    kv = "KV cache F32" if rt.get("kv_cache") == "f32" else "KV cache F16"
    kernels = list(dict.fromkeys(k for c in mine for k in c.get("kernels") or []))
    return [sc.get("name"), f"{rt.get('name')} {rt.get('type')}", DASH, DASH, f"tensor types: {types}",
            "; ".join([*acts, kv]) if acts else kv, f"whole model ({rt.get('name')})",
            f"{rt.get('name')}'s own rules", "none", f"{rt.get('name')}'s quantizer", ", ".join(kernels) or DASH,
            "no" if kernels else DASH]


def _method_text(method: dict, mine: list) -> str:
    """The method with every parameter the cells recorded, and the seconds it took per cell (min-max)."""
    ran = [c["method"] for c in mine if c.get("method")]
    name = method.get("name") or (ran[0]["name"] if ran else "rtn")
    params = ran[0].get("params") if ran else {k: v for k, v in method.items() if k != "name"}
    text = name + (": " + ", ".join(f"{k} {str(v).lower() if isinstance(v, bool) else v}"
                                    for k, v in (params or {}).items()) if params else "")
    own = [m for m in ran if not m.get("shared_from")]          # cells that quantized, not those that reused it
    secs = sorted(num(m.get("seconds")) for m in own if num(m.get("seconds")) is not None)
    if secs and name != "rtn":
        text += f"; {sig(secs[0])} s" if secs[0] == secs[-1] or len(secs) == 1 else \
            f"; {sig(secs[0])}-{sig(secs[-1])} s per quantization"
        if len(own) < len(ran):
            text += f" (once for {len(ran)} cells)" if len(own) == 1 else f" ({len(own)} quantizations, {len(ran)} cells)"
    return text


def _calibration_text(cal: dict | None, activations, mine: list, sc: dict | None = None) -> str:
    """Calibration as configured, with the hash and overlap the cells recorded."""
    if not cal:
        return "none (dynamic)" if activations else "none (weight-only)"
    got = next((c["calibration"] for c in mine if c.get("calibration")), None) or {}
    bits = [str(cal.get("dataset")), f"{cal.get('size')} samples", str(cal.get("method"))]
    if got.get("hash"):
        bits.append(f"hash {str(got['hash'])[:8]}")
    ov = got.get("overlap_with_eval")
    bits.append("overlap not checked" if ov is None else
                "no overlap with eval" if ov == 0 else f"⚠ {ov} samples overlap eval")
    if got.get("seq_len"):
        bits.append(f"{got['seq_len']} tokens each")
    if got and got.get("used") is False:
        bits.append("unused")
    return ", ".join(bits)


def _model_row(meta: dict, name: str) -> list:
    mm = (meta.get("models") or {}).get(name) or {}
    p = num(mm.get("params"))
    refs = mm.get("lm_reference") or {}
    ref_s = DASH
    if refs:
        r0 = next(iter(refs.values()))
        how = sorted({"reused from cache" if r.get("cache") == "hit" else "computed" for r in refs.values()})
        ref_s = f"top-{r0.get('k')} of {r0.get('vocab')} tokens per position, {' / '.join(how)}"
    return [name, mm.get("id", DASH), mm.get("task", DASH), DASH if p is None else f"{sig(p / 1e6)}M",
            _source_text(mm), ref_s]


def _source_text(mm: dict) -> str:
    """Where the weights came from; for a model that was quantized before qbench saw it (a GGUF file), what
    the baseline really is."""
    text = mm.get("source_origin") or DASH
    fmt = mm.get("source_format")
    if fmt:
        types = ", ".join(f"{n} {t}" for t, n in sorted((fmt.get("tensor_types") or {}).items(),
                                                         key=lambda kv: -kv[1]))
        text += (f" [dequantized from {fmt.get('file_type') or 'a quantized file'}"
                 f"{' (' + types + ')' if types else ''}, sha256 {str(fmt.get('sha256', ''))[:12]}]")
    return text


def _workload_row(wl: dict, cells: list) -> list:
    ev = next((c["evaluation"] for c in cells
               if c.get("workload") == wl.get("name") and c.get("evaluation")), None) or {}
    return [wl.get("name"), wl.get("dataset"), ev.get("n", DASH), str(ev.get("hash") or DASH)[:8]]


def hardware(meta: dict, cells: list) -> dict:
    """The machine that started the run, what ran its cells, and on how many machines they ran."""
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
        ("Memory allocator", allocator_text(hw, cells)),
        ("Device used", meta.get("device") or DASH),
        ("Executor", executors_text(meta)),
        ("Cells ran on", machines_text(cells)),
        ("git commit", meta.get("git_commit") or "unknown"),
        ("qbench version", meta.get("qbench_version") or DASH),
    ]
    return table(["Item", "Value"], [list(i) for i in items])


def executors_text(meta: dict) -> str:
    """'ray (2 nodes, 2 cells at a time)', sessions of a resumed run joined by 'then'."""
    parts = []
    for e in meta.get("executors") or []:
        if e.get("name") == "ray":
            parts.append(f"ray ({e.get('nodes')} node(s), {e.get('slots')} cell(s) at a time)")
        else:
            parts.append(str(e.get("name") or DASH))
    return ", then ".join(parts) or DASH


def cell_machines(cells: list) -> tuple[set, set]:
    """(distinct nodes, distinct hardware fingerprints) of the cells that ran; a node is a host name hash
    and, on a cluster, the cluster's node id."""
    ran = [c for c in cells if c.get("status") in ("ok", "failed") and c.get("fingerprint")]
    return {(c.get("host"), c.get("node")) for c in ran}, {c["fingerprint"] for c in ran}


def allocator_text(hw: dict, cells: list) -> str:
    """The allocator setting the cells were measured under (each records its process's); the driver's, from meta,
    where no cell says (runs made before cells recorded it). Several settings are each given with their count."""
    seen = [c["hardware"]["allocator"] for c in cells
            if c.get("status") in ("ok", "failed") and (c.get("hardware") or {}).get("allocator")]
    if not seen:
        return hw.get("allocator") or DASH
    distinct = sorted(set(seen))
    if len(distinct) == 1:
        return distinct[0]
    return "; ".join(f"{a} ({seen.count(a)} cells)" for a in distinct)


def machines_text(cells: list) -> str:
    nodes, prints = cell_machines(cells)
    if not prints:
        return DASH
    return f"{len(nodes)} node(s); hardware fingerprint(s) {', '.join(sorted(prints))}"


def reproduce(meta: dict) -> dict:
    import yaml

    text = yaml.safe_dump(meta.get("experiment") or {}, sort_keys=False, allow_unicode=True)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return {"command": meta.get("command") or DASH, "experiment_file": meta.get("experiment_file") or DASH,
            "yaml": text, "fence": "`" * max(3, longest + 1)}
