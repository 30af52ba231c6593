"""Card plots: collect() picks plain data out of the results (it goes into card.json);
draw() turns that data into PNG bytes with matplotlib's Agg backend, imported lazily.

A plot whose data is absent is simply not collected, so it is neither drawn nor mentioned.
"""
from __future__ import annotations

import io
import math

from qbench.report.fmt import num
from qbench.results.metrics import metric as metric_spec
from qbench.results.metrics import plotted

# Which metric each plot draws, from the registry's plot roles.
QUALITY = tuple(m.name for m in plotted("quality_speed"))  # the quality metrics plotted against speed
SPEEDUP = plotted("speedup")[0].name                        # speedup (paired) per batch size, and the x axis
WEIGHTS = plotted("weights")[0].name                        # weight bytes, baseline and quantized
MARKERS = "osD^vPX*<>"
TITLES = {
    "speedup": "Speedup over baseline by batch size (95% CI)",
    "quality_speed": "Quality vs speed per workload",
    "sqnr": "Weight SQNR per module",
    "weights": "Weight memory by scheme",
}


def _label(model, scheme, models):
    return scheme if len(models) == 1 else f"{model} / {scheme}"


def collect(ix, order: dict, qcells: dict) -> list:
    """Plot data from an Index of rows, the card order and the quantization-map cells."""
    models, schemes, workloads = order["models"], order["schemes"], order["workloads"]
    pairs = [(m, s) for m in models for s in schemes]
    data: dict = {}

    series, groups = [], set()
    for m, s in pairs:
        w = ix.speed_workload(m, s, workloads)
        if w is None:
            continue
        pts = {bs: ix.get(m, s, w, SPEEDUP, "paired", bs) for bs in ix.batch_sizes(m, s, w)}
        pts = {bs: r for bs, r in pts.items() if r and num(r["value"]) is not None}
        if pts:
            groups |= set(pts)
            series.append({"label": _label(m, s, models), "workload": w, "points": {
                str(bs): [num(r["value"]), num(r["ci_low"]), num(r["ci_high"])] for bs, r in pts.items()}})
    if series:
        data["speedup"] = {"batch_sizes": sorted(groups), "series": series}

    points = []
    for m, s in pairs:
        w0 = ix.speed_workload(m, s, workloads)
        bs = ix.batch_sizes(m, s, w0)[-1] if w0 else None
        sp = num((ix.get(m, s, w0, SPEEDUP, "paired", bs) or {}).get("value")) if w0 else None
        for w in workloads:
            for metric in QUALITY:
                q = num((ix.get(m, s, w, metric) or {}).get("value"))
                if sp is not None and q is not None:
                    points.append({"label": _label(m, s, models), "scheme": s, "workload": w,
                                   "metric": metric, "speedup": sp, "batch_size": bs, "quality": q})
    if points:
        data["quality_speed"] = {"points": points}

    sq = []
    for m, s in pairs:
        c = qcells.get((m, s))
        vals = [num(q.get("sqnr_db")) for q in (c or {}).get("quant_map", [])]
        if any(v is not None for v in vals):
            sq.append({"label": _label(m, s, models), "values": vals})
    if sq:
        data["sqnr"] = {"series": sq}

    bars = []
    for m in models:
        base = next((r for s in schemes for w in workloads
                     for r in [ix.get(m, s, w, WEIGHTS, "baseline")] if r and num(r["value"])), None)
        if base:
            bars.append({"label": m if len(models) > 1 else "baseline", "mib": num(base["value"]) / 2 ** 20})
        for s in schemes:
            r = next((r for w in workloads for r in [ix.get(m, s, w, WEIGHTS, "quantized")]
                      if r and num(r["value"])), None)
            if r:
                bars.append({"label": _label(m, s, models), "mib": num(r["value"]) / 2 ** 20})
    if bars:
        data["weights"] = {"bars": bars}

    return [{"name": k, "title": TITLES[k], "file": f"plots/{k}.png", "data": data[k]}
            for k in TITLES if k in data]


def _speedup(ax, d):
    bss, series = d["batch_sizes"], d["series"]
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for j, bs in enumerate(bss):
            v, l, h = s["points"].get(str(bs), [None, None, None])
            if v is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(v)
            lo.append(v - l if l is not None else 0)
            hi.append(h - v if h is not None else 0)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=s["label"])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(bss)), [str(b) for b in bss])
    ax.set_xlabel("batch size")
    ax.set_ylabel("speedup (x, higher is faster)")
    ax.legend(fontsize="small")


def _quality_speed(fig, d):
    metrics = list(dict.fromkeys(p["metric"] for p in d["points"]))
    workloads = list(dict.fromkeys(p["workload"] for p in d["points"]))
    labels = list(dict.fromkeys(p["label"] for p in d["points"]))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for p in (p for p in d["points"] if p["metric"] == metric):
            ax.scatter(p["speedup"], p["quality"], color=f"C{workloads.index(p['workload']) % 10}",
                       marker=MARKERS[labels.index(p["label"]) % len(MARKERS)], s=60)
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("speedup at the largest batch size (x)")
        better = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(metric_spec(metric).direction, "")
        ax.set_ylabel(metric + better)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linewidth=6, color=f"C{i % 10}", label=w) for i, w in enumerate(workloads)]
    handles += [Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)], color="gray", label=lab)
                for i, lab in enumerate(labels)]
    axes[-1].legend(handles=handles, fontsize="small")


def _sqnr(ax, d):
    from matplotlib.ticker import MaxNLocator

    for s in d["series"]:  # NaN leaves a gap where a module was not quantized
        ax.plot(range(len(s["values"])), [math.nan if v is None else v for v in s["values"]],
                marker="o", markersize=4, label=s["label"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("module index (quantization map order)")
    ax.set_ylabel("SQNR (dB, higher is better)")
    ax.legend(fontsize="small")


def _weights(ax, d):
    bars = d["bars"]
    ax.bar(range(len(bars)), [b["mib"] for b in bars], color=[f"C{i % 10}" for i in range(len(bars))])
    ax.set_xticks(range(len(bars)), [b["label"] for b in bars], rotation=20, ha="right")
    ax.set_ylabel("weights (MiB)")


def draw(plot: dict) -> bytes:
    """PNG bytes for one collected plot."""
    import matplotlib

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg explicitly; pyplot untouched
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure(figsize=(7.5, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        if plot["name"] == "quality_speed":
            _quality_speed(fig, plot["data"])
        else:
            {"speedup": _speedup, "sqnr": _sqnr, "weights": _weights}[plot["name"]](fig.subplots(), plot["data"])
        fig.suptitle(plot["title"])
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def draw_all(plots: list) -> dict:
    """{name: PNG bytes} for every plot that has data."""
    return {p["name"]: draw(p) for p in plots}
