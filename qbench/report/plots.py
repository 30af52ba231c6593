"""Card plots: collect() picks plain data out of the results (it goes into card.json); draw() turns that data
into PNG bytes with matplotlib's Agg backend, imported lazily.

Every plot has the same data shape: facets (one per model, or per model and workload), each holding series
with a label, a color and a marker, and the points the series draws. A scheme has one color and marker in
every plot of a card (`styles`; `qbench publish` passes one mapping for a whole site), no two series of a plot
share both, and every plot carries alt text that says what it shows. A plot whose data is absent is not
collected, so it is neither drawn nor mentioned.
"""
from __future__ import annotations

import io
import math

from qbench.report.fmt import num, sig
from qbench.results.metrics import headline, plotted

SPEEDUP = plotted("speedup")[0].name                        # speedup (paired) per batch size
WEIGHTS = plotted("weights")[0].name                        # weight bytes, baseline and quantized
# Okabe & Ito's colour-blind-safe palette (yellow left out: too faint on white), then four more
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C564B", "#7F7F7F",
           "#BCBD22")
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")
BASELINE = {"color": "#BBBBBB", "marker": "_"}
TITLES = {
    "pareto": "Quality lost vs speed gained, per model and workload (95% CI)",
    "speedup": "Speed-up over the baseline by batch size (95% CI)",
    "text_vs_code": "Degradation on each workload, per scheme (95% CI)",
    "sqnr": "Weight SQNR per module",
    "weights": "Weight memory by scheme",
    "loss": "Quantization-aware training: loss per step",
    "frontier": "Measured damage against bits per weight, per model and workload (95% CI)",
}


def styles(schemes: list) -> dict:
    """{scheme: {"color", "marker"}}, unique pairs for up to 100 schemes, by position in `schemes`."""
    n = len(PALETTE)
    return {s: {"color": PALETTE[i % n], "marker": MARKERS[(i % n + i // n) % len(MARKERS)]}
            for i, s in enumerate(dict.fromkeys(schemes))}


def _series(label: str, style: dict, points: list, **extra) -> dict:
    return {"label": label, "color": style["color"], "marker": style["marker"], "points": points, **extra}


def headline_batch(ix, m: str, schemes: list, workloads: list) -> int | None:
    """The card's headline batch size for a model: the largest batch size every timed scheme measured."""
    sizes = [set(ix.batch_sizes(m, s, w)) for s in schemes for w in [ix.speed_workload(m, s, workloads)] if w]
    common = set.intersection(*sizes) if sizes else set()
    return max(common) if common else None


def degradation_ci(ix, m: str, s: str, w: str, spec) -> list | None:
    """[degradation, low, high] of the headline metric (0 = no change, higher = worse), or None."""
    r = ix.get(m, s, w, spec.name) if spec else None
    if not r or num(r["value"]) is None:
        return None
    v, lo, hi = num(r["value"]), num(r.get("ci_low")), num(r.get("ci_high"))
    ends = sorted((spec.degradation(lo), spec.degradation(hi))) if None not in (lo, hi) else [None, None]
    return [spec.degradation(v), *ends]


def collect(ix, order: dict, qcells: dict, style: dict | None = None, tasks: dict | None = None) -> list:
    """Plot data from an Index of rows, the card order, the quantization-map cells, the scheme styles and
    {model: task}."""
    models, schemes, workloads = order["models"], order["schemes"], order["workloads"]
    style = style or styles(schemes)
    tasks = tasks or {}
    data: dict = {}

    facets = []
    for m in models:
        bss = sorted({bs for s in schemes for w in [ix.speed_workload(m, s, workloads)] if w
                      for bs in ix.batch_sizes(m, s, w)})
        series = []
        for s in schemes:
            w = ix.speed_workload(m, s, workloads)
            pts = [[bs, num(r["value"]), num(r["ci_low"]), num(r["ci_high"])] for bs in bss if w
                   for r in [ix.get(m, s, w, SPEEDUP, "paired", bs)] if r and num(r["value"]) is not None]
            if pts:
                series.append(_series(s, style[s], pts, scheme=s))
        if series:
            facets.append({"title": m, "series": series, "categories": bss})
    if facets:
        data["speedup"] = {"x": "batch size", "y": "speed-up (x, higher is faster)", "facets": facets}

    facets = []
    for m in models:
        spec = headline(tasks.get(m))
        bs = headline_batch(ix, m, schemes, workloads)
        for w in workloads:
            series = []
            for s in schemes:
                sw = ix.speed_workload(m, s, workloads)
                sp = ix.get(m, s, sw, SPEEDUP, "paired", bs) if sw and bs is not None else None
                q = degradation_ci(ix, m, s, w, spec)
                if sp and num(sp["value"]) is not None and q:
                    series.append(_series(s, style[s], [[num(sp["value"]), num(sp["ci_low"]), num(sp["ci_high"]),
                                                         *q]], scheme=s))
            if series:
                facets.append({"title": f"{m} / {w}", "series": series, "frontier": _frontier(series),
                               "y": f"{spec.degradation_label} change (lower is better)", "batch_size": bs})
    if facets:
        data["pareto"] = {"x": "speed-up at the headline batch size (x)", "y": "quality lost", "facets": facets}

    if len(workloads) >= 2:
        a, b = ("text", "code") if {"text", "code"} <= set(workloads) else tuple(workloads[:2])
        facets = []
        for m in models:
            spec = headline(tasks.get(m))
            series = []
            for s in schemes:
                for w, filled in ((a, True), (b, False)):
                    q = degradation_ci(ix, m, s, w, spec)
                    if q:
                        st = {"color": style[s]["color"], "marker": style[s]["marker"] + ("" if filled else "-open")}
                        series.append(_series(f"{s} / {w}", st, [q], scheme=s, workload=w))
            if series:
                facets.append({"title": m, "series": series, "y": f"{spec.degradation_label} change"})
        if facets:
            data["text_vs_code"] = {"x": "degradation (lower is better)", "y": "scheme", "facets": facets,
                                    "workloads": [a, b]}

    facets = []
    for m in models:
        series = []
        for s in schemes:
            vals = [num(q.get("sqnr_db")) for q in (qcells.get((m, s)) or {}).get("quant_map", [])]
            if any(v is not None for v in vals):
                series.append(_series(s, style[s], [[i, v] for i, v in enumerate(vals)], scheme=s))
        if series:
            facets.append({"title": m, "series": series})
    if facets:
        data["sqnr"] = {"x": "module index (quantization map order)", "y": "SQNR (dB, higher is better)",
                        "facets": facets}

    facets = []
    for m in models:
        base = next((r for s in schemes for w in workloads
                     for r in [ix.get(m, s, w, WEIGHTS, "baseline")] if r and num(r["value"])), None)
        series = [_series("baseline", BASELINE, [[num(base["value"]) / 2 ** 20]])] if base else []
        for s in schemes:
            r = next((r for w in workloads for r in [ix.get(m, s, w, WEIGHTS, "quantized")]
                      if r and num(r["value"])), None)
            if r:
                series.append(_series(s, style[s], [[num(r["value"]) / 2 ** 20]], scheme=s))
        if len(series) > (1 if base else 0):
            facets.append({"title": m, "series": series})
    if facets:
        data["weights"] = {"x": "scheme", "y": "weights (MiB)", "facets": facets}

    if any(c.get("mixed") for c in qcells.values()):
        from qbench.report.mixed import damage

        facets = []
        for m in models:
            for w in workloads:
                series = []
                for s in schemes:
                    b = ix.get(m, s, w, "bits_per_weight", "quantized")
                    d = damage(ix, m, s, w, tasks.get(m))
                    if b and num(b["value"]) is not None and d:
                        series.append(_series(s, style[s], [[num(b["value"]), *d]], scheme=s,
                                              mixed=bool((qcells.get((m, s)) or {}).get("mixed"))))
                if series:
                    facets.append({"title": f"{m} / {w}", "series": series,
                                   "y": "KL mean" if tasks.get(m) == "causal_lm" else "1 − cosine"})
        if facets:
            data["frontier"] = {"x": "bits per weight (whole model, as held)", "y": "measured damage (log scale)",
                                "facets": facets}

    facets = []
    for m in models:
        series = []
        for s in schemes:
            loss = (((qcells.get((m, s)) or {}).get("method") or {}).get("training") or {}).get("loss") or []
            if loss:
                series.append(_series(s, style[s], [[i + 1, num(v)] for i, v in enumerate(loss)], scheme=s))
        if series:
            facets.append({"title": m, "series": series})
    if facets:
        data["loss"] = {"x": "training step", "y": "distillation loss (log scale)", "facets": facets}

    return [{"name": k, "title": TITLES[k], "file": f"plots/{k}.png", "alt": _alt(k, data[k]), "data": data[k]}
            for k in TITLES if k in data]


def _frontier(series: list) -> list:
    """Labels of the non-dominated schemes (no other is both at least as fast and loses at most as much,
    and better in one), by increasing speed-up."""
    pts = [(s["points"][0][0], s["points"][0][3], s["label"]) for s in series]
    keep = [p for p in pts if not any((o[0] >= p[0] and o[1] <= p[1]) and (o[0] > p[0] or o[1] < p[1])
                                      for o in pts)]
    return [p[2] for p in sorted(keep)]


def _alt(name: str, d: dict) -> str:
    """What the plot shows, in one or two sentences, from its data."""
    parts = []
    for f in d["facets"]:
        ss = f["series"]
        if name == "speedup":
            best = max(((p[1], p[0], s["label"]) for s in ss for p in s["points"]), default=None)
            parts.append(f"{f['title']}: {len(ss)} schemes at batch sizes {', '.join(map(str, f['categories']))}"
                         + (f"; fastest {best[2]} at {sig(best[0])}x (batch {best[1]})" if best else ""))
        elif name == "pareto":
            parts.append(f"{f['title']}: {len(ss)} schemes; the best trade-offs are {', '.join(f['frontier'])}")
        elif name == "text_vs_code":
            worst = max(ss, key=lambda s: s["points"][0][0])
            parts.append(f"{f['title']}: largest degradation {worst['label']} ({sig(worst['points'][0][0])})")
        elif name == "sqnr":
            lows = [(v, s["label"]) for s in ss for _, v in s["points"] if v is not None]
            low = min(lows)
            parts.append(f"{f['title']}: {len(ss)} schemes, lowest module SQNR {sig(low[0])} dB ({low[1]})")
        elif name == "loss":
            parts.append(f"{f['title']}: " + ", ".join(
                f"{s['label']} from {sig(s['points'][0][1])} to {sig(s['points'][-1][1])} in {len(s['points'])} steps"
                for s in ss))
        elif name == "frontier":
            parts.append(f"{f['title']}: " + ", ".join(
                f"{s['label']} {sig(s['points'][0][0])} bits, {sig(s['points'][0][1])}" for s in ss))
        elif name == "weights":
            parts.append(f"{f['title']}: " + ", ".join(f"{s['label']} {sig(s['points'][0][0])} MiB" for s in ss))
    return f"{TITLES[name]}. " + "; ".join(parts) + "."


def _legend(fig, ax_series: list) -> None:
    """One legend for the figure, below the plots (never over the data), each label once."""
    handles = {}
    for s in ax_series:
        handles.setdefault(s["label"], _handle(s))
    widest = max((len(k) for k in handles), default=1)
    fig.legend(handles=list(handles.values()), loc="outside lower center", frameon=False, fontsize="small",
               ncols=max(1, min(4, len(handles), 90 // (widest + 4))))


def _handle(s: dict):
    from matplotlib.lines import Line2D

    marker, open_ = _marker(s["marker"])
    return Line2D([], [], color=s["color"], marker=marker, linestyle="", markersize=7, label=s["label"],
                  markerfacecolor="none" if open_ else s["color"])


def _marker(m: str) -> tuple[str, bool]:
    return (m[:-5], True) if m.endswith("-open") else (m, False)


def _err(v, lo, hi) -> list:
    """Matplotlib's [[below], [above]] error extent of v from its interval; 0 where an end is missing."""
    return [[v - lo if lo is not None else 0], [hi - v if hi is not None else 0]]


def _point(ax, s: dict, x, y, xerr, yerr=None) -> None:
    """One series' point with its error bars, in the series' colour and marker (hollow for '-open')."""
    marker, open_ = _marker(s["marker"])
    ax.errorbar([x], [y], xerr=xerr, yerr=yerr, color=s["color"], marker=marker, markersize=7, capsize=2,
                linestyle="", markerfacecolor="none" if open_ else s["color"])


def _grid(fig, n: int, ncols: int = 2):
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _speedup(fig, d):
    facets = d["facets"]
    for ax, f in zip(_grid(fig, len(facets)), facets):
        cats, ss = f["categories"], f["series"]
        width = 0.8 / max(1, len(ss))
        for i, s in enumerate(ss):
            xs = [cats.index(p[0]) - 0.4 + width * (i + 0.5) for p in s["points"]]
            ys = [p[1] for p in s["points"]]
            extents = [_err(*p[1:4]) for p in s["points"]]
            err = [[e[0][0] for e in extents], [e[1][0] for e in extents]]
            ax.bar(xs, ys, width, yerr=err, capsize=2, color=s["color"], label=s["label"])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(cats)), [str(c) for c in cats])
        ax.set_title(f["title"], fontsize="medium")
        ax.set_xlabel(d["x"])
        ax.set_ylabel(d["y"])
    _legend(fig, [s for f in facets for s in f["series"]])


def _pareto(fig, d):
    facets = d["facets"]
    for ax, f in zip(_grid(fig, len(facets)), facets):
        for s in f["series"]:
            x, xlo, xhi, y, ylo, yhi = s["points"][0]
            _point(ax, s, x, y, _err(x, xlo, xhi), _err(y, ylo, yhi))
            ax.annotate(s.get("scheme") or s["label"], (x, y), xytext=(5, 4), textcoords="offset points",
                        fontsize="x-small", color=s["color"])
        front = [next(s for s in f["series"] if s["label"] == lab)["points"][0] for lab in f["frontier"]]
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[3] for p in front], color="#555555", linewidth=1, linestyle=":",
                    zorder=0)
        ax.axvline(1.0, color="black", linewidth=0.6, linestyle="--")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(f"{f['title']} (batch {f['batch_size']})", fontsize="medium")
        ax.set_xlabel(d["x"])
        ax.set_ylabel(f["y"])
    _legend(fig, [s for f in facets for s in f["series"]])


def _text_vs_code(fig, d):
    facets = d["facets"]
    for ax, f in zip(_grid(fig, len(facets)), facets):
        schemes = list(dict.fromkeys(s["scheme"] for s in f["series"]))
        for s in f["series"]:
            y = schemes.index(s["scheme"]) + (-0.12 if s["workload"] == d["workloads"][0] else 0.12)
            v, lo, hi = s["points"][0]
            _point(ax, s, v, y, _err(v, lo, hi))
        for sc in schemes:                     # the dumbbell: a line between the two workloads of a scheme
            pair = [s for s in f["series"] if s["scheme"] == sc]
            if len(pair) == 2:
                i = schemes.index(sc)
                ax.plot([pair[0]["points"][0][0], pair[1]["points"][0][0]], [i - 0.12, i + 0.12],
                        color=pair[0]["color"], linewidth=1)
        ax.axvline(0.0, color="black", linewidth=0.6)
        ax.set_yticks(range(len(schemes)), schemes)
        ax.invert_yaxis()
        ax.set_title(f"{f['title']}: filled {d['workloads'][0]}, open {d['workloads'][1]}", fontsize="medium")
        ax.set_xlabel(f["y"] + " (lower is better)")
    _legend(fig, [s for f in facets for s in f["series"]])


def _sqnr(fig, d):
    from matplotlib.ticker import MaxNLocator

    facets = d["facets"]
    for ax, f in zip(_grid(fig, len(facets)), facets):
        for s in f["series"]:       # NaN leaves a gap where a module was not quantized
            ax.plot([p[0] for p in s["points"]], [math.nan if p[1] is None else p[1] for p in s["points"]],
                    marker=s["marker"], markersize=3, linewidth=0.8, color=s["color"], label=s["label"])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f["title"], fontsize="medium")
        ax.set_xlabel(d["x"])
        ax.set_ylabel(d["y"])
    _legend(fig, [s for f in facets for s in f["series"]])


def _weights(fig, d):
    facets = d["facets"]
    for ax, f in zip(_grid(fig, len(facets)), facets):
        ss = f["series"]
        ax.bar(range(len(ss)), [s["points"][0][0] for s in ss], color=[s["color"] for s in ss])
        ax.set_xticks(range(len(ss)), [s["label"] for s in ss], rotation=30, ha="right", fontsize="small")
        ax.set_title(f["title"], fontsize="medium")
        ax.set_ylabel(d["y"])


def log_y(ax) -> None:
    """A log y axis whose ticks read as plain numbers (card plots turn math text off, so the default labels
    would show their TeX source)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))


def _loss(fig, d):
    facets = d["facets"]
    for ax, f in zip(_grid(fig, len(facets)), facets):
        for s in f["series"]:
            ys = [p[1] for p in s["points"]]
            ax.plot([p[0] for p in s["points"]], [math.nan if y is None or y <= 0 else y for y in ys],
                    linewidth=0.9, color=s["color"], label=s["label"])
        log_y(ax)
        ax.set_title(f["title"], fontsize="medium")
        ax.set_xlabel(d["x"])
        ax.set_ylabel(d["y"])
    _legend(fig, [s for f in facets for s in f["series"]])


def _frontier_plot(fig, d):
    facets = d["facets"]
    for ax, f in zip(_grid(fig, len(facets)), facets):
        mixed = sorted((s["points"][0] for s in f["series"] if s.get("mixed")), key=lambda p: p[0])
        if len(mixed) > 1:
            ax.plot([p[0] for p in mixed], [p[1] for p in mixed], color="#555555", linewidth=1, linestyle=":",
                    zorder=0)
        for s in f["series"]:
            x, y, lo, hi = s["points"][0]
            if y is not None and y > 0:
                _point(ax, s, x, y, None, _err(y, lo if lo is None or lo > 0 else None, hi))
                ax.annotate(s.get("scheme") or s["label"], (x, y), xytext=(5, 4), textcoords="offset points",
                            fontsize="x-small", color=s["color"])
        log_y(ax)
        ax.set_title(f["title"], fontsize="medium")
        ax.set_xlabel(d["x"])
        ax.set_ylabel(f["y"] + " (log scale)")
    _legend(fig, [s for f in facets for s in f["series"]])


DRAW = {"pareto": _pareto, "speedup": _speedup, "text_vs_code": _text_vs_code, "sqnr": _sqnr, "weights": _weights,
        "loss": _loss, "frontier": _frontier_plot}


def draw(plot: dict) -> bytes:
    """PNG bytes for one collected plot."""
    import matplotlib

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg explicitly; pyplot untouched
    from matplotlib.figure import Figure

    n = len(plot["data"]["facets"])
    rows = math.ceil(n / min(2, n))
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 11}):
        fig = Figure(figsize=(8.0, 1.0 + 3.4 * rows), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        DRAW[plot["name"]](fig, plot["data"])
        fig.suptitle(plot["title"])
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def draw_all(plots: list) -> dict:
    """{name: PNG bytes} for every plot that has data."""
    return {p["name"]: draw(p) for p in plots}
