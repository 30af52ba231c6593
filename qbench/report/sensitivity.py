"""The sensitivity report (qbench.runner.sensitivity's dict) as sensitivity.json, .md, .html and a plot.

Ranked tables per candidate (most and least sensitive units first), the full per-unit table and a plot of each
unit's score by position in the model, one series per candidate. Reads the report dict only; never imports torch.
"""
from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path

from qbench.atomic import finite, write_atomic
from qbench.report.fmt import sig
from qbench.report.plots import PALETTE, log_y
from qbench.report.render import md_align, md_cell

TOP = 10


def _score_name(report: dict) -> str:
    return "KL mean" if report.get("score") == "kl_mean" else "1 − cosine"


def _unit(u: dict) -> str:
    names = u["names"]
    if len(names) == 1:
        return names[0]
    prefix = names[0].rsplit(".", 1)[0]
    if all(n.rsplit(".", 1)[0] == prefix for n in names):
        return f"{prefix}.{{{','.join(n.rsplit('.', 1)[1] for n in names)}}}"
    return " + ".join(names)


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def tables(report: dict) -> dict:
    """{"ranked": {candidate: (header, rows)}, "all": (header, rows)} with formatted cells."""
    units, cands = report["units"], [c["name"] for c in report["candidates"]]
    ranked = {}
    for c in cands:
        have = [u for u in units if u["results"].get(c)]
        order = sorted(have, key=lambda u: -u["results"][c]["score"])
        pick = order[:TOP] + (order[-3:] if len(order) > TOP + 3 else order[TOP:])
        rows = [[str(order.index(u) + 1), _unit(u), str(u["depth"]), f"{u['params']:,}",
                 sig(u["results"][c]["score"]), sig(_finite(u["results"][c]["sqnr_db"])),
                 sig(u["results"][c]["bits"])] for u in pick]
        ranked[c] = (["Rank", "Unit", "Block", "Weights", _score_name(report), "Output SQNR dB", "Bits/weight"], rows)
    header = ["#", "Unit", "Block", "Weights"] + [f"{c}: {_score_name(report)} / SQNR dB" for c in cands]
    rows = [[str(u["index"]), _unit(u), str(u["depth"]), f"{u['params']:,}"] +
            [f"{sig(r['score'])} / {sig(_finite(r['sqnr_db']))}" if (r := u["results"].get(c)) else
             "cannot hold" for c in cands] for u in units]
    return {"ranked": ranked, "all": (header, rows)}


def _md_table(header, rows) -> str:
    """A Markdown table, cells escaped as the card's are (report.render.md_cell)."""
    return "\n".join(["| " + " | ".join(map(md_cell, header)) + " |",
                      "|" + "".join(md_align("l") + "|" for _ in header)] +
                     ["| " + " | ".join(map(md_cell, r)) + " |" for r in rows])


def _intro(report: dict) -> list[str]:
    cal = report["calibration"]
    return [f"Model {report['model']} ({report['task']}, {report['origin']}); {len(report['units'])} decision units "
            f"(a linear, or the linears that read one input), each quantized alone with round to nearest while "
            f"everything else stays in float, on {cal['size']} calibration samples x {cal['seq_len']} tokens of "
            f"{cal['dataset']} (hash {str(cal['hash'])[:12]}, {cal['tokens']} real tokens; no evaluation sample). "
            f"Score: {_score_name(report)} against the float model (higher is more sensitive); output SQNR of the "
            f"unit on the same inputs. Quantization emulated (dequantized weights in a float matmul). "
            f"{report['threads']} threads, {sig(report['seconds'])} s."]


def most_and_least(report: dict) -> dict:
    """{candidate: (most sensitive unit, least sensitive unit)} by score."""
    out = {}
    for c in (c["name"] for c in report["candidates"]):
        have = [u for u in report["units"] if u["results"].get(c)]
        if have:
            s = sorted(have, key=lambda u: u["results"][c]["score"])
            out[c] = (_unit(s[-1]), _unit(s[0]))
    return out


def markdown(report: dict) -> str:
    t = tables(report)
    out = [f"# Sensitivity: {report['model']}", "", *_intro(report), "", "Candidates: " + "; ".join(
        f"{c['name']} (weights {c['weights']}, activations {c['activations']})" for c in report["candidates"]), ""]
    for c, (most, least) in most_and_least(report).items():
        out.append(f"- {c}: most sensitive {most}; least sensitive {least}.")
    out.append("")
    for c, (h, rows) in t["ranked"].items():
        out += [f"## {c}: units ranked by {_score_name(report)}", "", _md_table(h, rows), ""]
    out += ["## Every unit", "", _md_table(*t["all"]), "", "![Score by unit](sensitivity.png)", ""]
    return "\n".join(out)


def html_page(report: dict) -> str:
    t = tables(report)
    e = html.escape

    def tab(h, rows):
        return ("<table><thead><tr>" + "".join(f"<th>{e(x)}</th>" for x in h) + "</tr></thead><tbody>" +
                "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows) +
                "</tbody></table>")
    parts = [f"<h1>Sensitivity: {e(report['model'])}</h1>", *(f"<p>{e(p)}</p>" for p in _intro(report)), "<ul>"]
    parts += [f"<li>{e(c)}: most sensitive <code>{e(m)}</code>; least sensitive <code>{e(lst)}</code></li>"
              for c, (m, lst) in most_and_least(report).items()]
    parts.append("</ul>")
    for c, (h, rows) in t["ranked"].items():
        parts += [f"<h2>{e(c)}: units ranked by {e(_score_name(report))}</h2>", tab(h, rows)]
    parts += ["<h2>Every unit</h2>", tab(*t["all"]),
              f'<img src="sensitivity.png" alt="{e(_alt(report))}">']
    style = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
             "text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sensitivity: "
            f"{e(report['model'])}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _alt(report: dict) -> str:
    bits = [f"{c}: most sensitive {m}, least {lst}" for c, (m, lst) in most_and_least(report).items()]
    return f"{_score_name(report)} per unit by position in {report['model']}, log scale; " + "; ".join(bits)


def plot(report: dict) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"text.parse_math": False, "font.size": 11}):
        fig = Figure(figsize=(8.0, 4.2), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for i, c in enumerate(x["name"] for x in report["candidates"]):
            pts = [(u["index"], u["results"][c]["score"]) for u in report["units"]
                   if u["results"].get(c) and u["results"][c]["score"] > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, linewidth=0.8, color=PALETTE[i % len(PALETTE)], label=c)
        log_y(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("unit (model order)")
        ax.set_ylabel(f"{_score_name(report)} (log scale, higher is more sensitive)")
        ax.set_title(f"Sensitivity of {report['model']}: each unit quantized alone", fontsize="medium")
        fig.legend(loc="outside lower center", frameon=False, fontsize="small", ncols=min(4, len(report["candidates"])))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def write(report: dict, out: Path) -> dict[str, Path]:
    """sensitivity.json, .md, .html and .png in `out` (created); returns {file name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"sensitivity.json": json.dumps(finite(report), indent=1) + "\n",
             "sensitivity.md": markdown(report), "sensitivity.html": html_page(report)}
    paths = {}
    for name, text in files.items():
        write_atomic(out / name, text.encode("utf-8"))
        paths[name] = out / name
    write_atomic(out / "sensitivity.png", plot(report))
    paths["sensitivity.png"] = out / "sensitivity.png"
    return paths

