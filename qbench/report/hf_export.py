"""Hugging Face model-card snippet from a run directory: YAML front matter + a short Markdown body.

hf_snippet(run_dir, model, scheme) returns the text; write_hf_snippet writes it atomically as
hf-<model>-<scheme>.md in the run directory. Every number comes from the card context
(qbench.report.build_context) and goes through the same Markdown escaping as card.md, so the
snippet shows exactly the strings the card shows. Reads results only; never imports torch.
"""
from __future__ import annotations

import re
from pathlib import Path

from qbench.atomic import write_atomic
from qbench.report.context import build_context
from qbench.report.fmt import DASH, table
from qbench.report.index import Index, card_order, model_task
from qbench.report.render import make_env
from qbench.results import ResultsTable, load_results

TEMPLATE = "hf_card.md.j2"
TAGS = ["quantized", "qbench"]
# Bundled model ids -> the hub repository they are an offline copy of. Mirrors
# qbench.models.loaders.BUNDLED (not imported: the report never loads the model stack).
BUNDLED_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
# A hub repository id: "name" or "namespace/name", letters, digits, '-', '_', '.'; at most 96 characters.
_HUB_ID = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def hub_id(model_id: str | None, source_origin: str | None = None) -> tuple[str | None, str]:
    """(hub repository id, "") for ids naming a hub model, else (None, why there is none).

    `source_origin` is what the run recorded about where the model came from (meta.json
    models.<name>.source_origin); it decides between a hub id and a relative local directory.
    """
    mid = str(model_id or "")
    if mid in BUNDLED_HUB_IDS:
        return BUNDLED_HUB_IDS[mid], ""
    if not mid.startswith("hf:"):
        return None, f"model id '{mid}' is not a Hugging Face hub id"
    target = mid[3:]
    origin = source_origin or ""
    local = (origin.startswith("local directory")
             or target.startswith((".", "/", "~")) or "\\" in target or ":" in target or target.count("/") > 1
             or (not origin.startswith("Hugging Face hub") and _exists(target)))
    if local:
        return None, "the model was loaded from a local directory, not from a Hugging Face hub repository"
    if len(target) > 96 or not _HUB_ID.fullmatch(target) or ".." in target or "--" in target:
        return None, "the model id is not a valid Hugging Face hub repository id"
    return target, ""


def _exists(target: str) -> bool:
    try:
        return Path(target).expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return False


def _choose(kind: str, given: str | None, choices: list[str]) -> str:
    if given is not None:
        if given in choices:
            return given
        raise ValueError(f"no {kind} '{given}' in this run; choose one of: {', '.join(choices) or 'none'}")
    if len(choices) == 1:
        return choices[0]
    if not choices:
        raise ValueError(f"this run has no {kind}s")
    raise ValueError(f"this run has {len(choices)} {kind}s; choose one of: {', '.join(choices)}")


def _pick(rows: list[dict], model: str, scheme: str) -> list[dict]:
    return [r for r in rows if r["cells"][:2] == [model, scheme]]


def _sub(t: dict, rows: list[dict], cols: list[int]) -> dict:
    """The columns `cols` of some rows of a card table, as a table of its own."""
    return table([t["columns"][i] for i in cols], [{"cells": [r["cells"][i] for i in cols], "flag": r["flag"]}
                                                  for r in rows], "".join(t["align"][i] for i in cols))


def _mentions(text: str, name: str) -> bool:
    return re.search(r"(?<![\w.-])" + re.escape(name) + r"(?![\w-])", text) is not None


def _context(t: ResultsTable, model: str | None, scheme: str | None) -> dict:
    ctx = build_context(t)
    meta, cells = t.meta, t.cells
    exp = meta.get("experiment") or {}
    order = card_order(exp, cells)
    models, schemes = order["models"], order["schemes"]
    errors = []
    for kind, given, choices in (("model", model, models), ("scheme", scheme, schemes)):
        try:
            _choose(kind, given, choices)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("; ".join(errors))
    model, scheme = _choose("model", model, models), _choose("scheme", scheme, schemes)

    ref = next((m for m in exp.get("models", []) if (m.get("name") or m.get("id")) == model), {})
    recorded = (meta.get("models") or {}).get(model) or {}
    model_id = ref.get("id") or recorded.get("id") or model
    base, why = hub_id(model_id, recorded.get("source_origin"))
    front = {"base_model": base, "base_model_relation": "quantized", "tags": list(TAGS),
             "library_name": "transformers"}

    sc = next((s for s in exp.get("schemes", []) if s.get("name") == scheme), None)
    st = ctx["setup"]["schemes"]
    srow = next((r["cells"] for r in st["rows"] if r["cells"][0] == scheme), None)
    config = []
    if srow:
        named = dict(zip(st["columns"], srow))
        group = ((sc or {}).get("weights") or {}).get("group_size")
        for label, value in (("Weight bits", named["Bits"]), ("Signedness", named["Signed"]),
                             ("Symmetry", named["Symmetry"]), ("Granularity", named["Granularity"]),
                             ("Group size", DASH if group is None else str(group)),
                             ("Activations", named["Activations"]), ("Quantized ops", named["Ops"]),
                             ("Excluded modules (kept at baseline precision)", named["Exclusions"]),
                             ("Calibration", named["Calibration"]), ("Kernel(s) that ran", named["Kernel(s)"]),
                             ("Emulated kernel", named["Emulated"])):
            config.append([label, value])
    if sc is not None:
        import yaml

        scheme_yaml = yaml.safe_dump(sc, sort_keys=False, allow_unicode=True)
    else:
        scheme_yaml = ""
    longest = max((len(run) for run in re.findall(r"`+", scheme_yaml)), default=0)

    res = ctx["results"]
    def mine(text: str, name: str, names: list[str]) -> bool:  # about this one, or about none of the others
        return _mentions(text, name) or not any(_mentions(text, n) for n in names if n != name)
    caveats = [c for c in ctx["caveats"] if mine(c, model, models) and mine(c, scheme, schemes)]
    return {
        "model": model, "scheme": scheme, "model_id": model_id, "base_model": base, "why_no_base": why,
        "revision": ref.get("revision"),
        "front_matter": front,
        "summary": [s["text"] for s in ctx["summary"] if (s["model"], s["scheme"]) == (model, scheme)],
        "config": table(["Setting", "Value"], config),
        "scheme_yaml": scheme_yaml, "fence": "`" * max(3, longest + 1),
        "baseline": ctx["setup"]["baseline"],
        "speed": _sub(res["speed"], _pick(res["speed"]["rows"], model, scheme), [2, 3, 7, 4, 5]),
        "memory": _sub(res["memory"], _pick(res["memory"]["rows"], model, scheme), [2, 3, 4, 5, 6]),
        "quality": _sub(res["quality"], _pick(res["quality"]["rows"], model, scheme),
                        list(range(2, len(res["quality"]["columns"])))),
        "caveats": caveats,
        "title": ctx["title"],
    }


# what each task's model-index entry reports: Hugging Face's task type, and the metrics (quality per workload)
_TASK_TYPES = {"causal_lm": "text-generation", "encoder": "feature-extraction"}
_INDEXED = {"causal_lm": ("kl_mean", "log_ppl_ratio", "top1_agreement", "gen_exact_match"),
            "encoder": ("cosine_mean", "nn_agreement")}


def model_index(source: ResultsTable | str | Path, model: str, scheme: str) -> list:
    """The `model-index` front-matter entry Hugging Face model repositories read for evaluation results: per
    workload, the quality of the quantized model against its unquantized baseline, and the speed-up at the
    headline batch size; each 95% interval in the metric's name (the format has no field for one)."""
    from qbench.report.fmt import num
    from qbench.report.plots import headline_batch
    from qbench.results.metrics import metric as spec

    t = source if isinstance(source, ResultsTable) else load_results(source)
    ix, cells = Index(t.rows), t.cells
    exp = t.meta.get("experiment") or {}
    order = card_order(exp, cells)
    task = model_task(cells, model)
    datasets = {w.get("name"): w.get("dataset") for w in exp.get("workloads") or []}
    bs = headline_batch(ix, model, [scheme], order["workloads"])

    def entry(name: str, r: dict, label: str) -> dict:
        v, lo, hi = (num(r.get(k)) for k in ("value", "ci_low", "ci_high"))
        ci = f" (95% CI {lo:.4g} to {hi:.4g})" if None not in (lo, hi) else ""
        return {"type": name, "value": round(v, 6), "name": f"{label}{ci}", "verified": False}

    results = []
    for w in order["workloads"]:
        metrics = [entry(m, r, f"{spec(m).short} vs the unquantized baseline") for m in _INDEXED.get(task, ())
                   for r in [ix.get(model, scheme, w, m, "quantized") or ix.get(model, scheme, w, m, "paired")]
                   if r and num(r.get("value")) is not None]
        for m, what in (("speedup", "prefill" if task == "causal_lm" else "forward"), ("decode_speedup", "decode")):
            r = ix.get(model, scheme, w, m, "paired", bs) if bs is not None else None
            if r and num(r.get("value")) is not None:
                metrics.append(entry(m, r, f"{what} speed-up over the baseline at batch {bs}"))
        if metrics:
            results.append({"task": {"type": _TASK_TYPES.get(task, "other")},
                            "dataset": {"name": _plain(f"{w} ({datasets.get(w) or w})"), "type": f"qbench/{_plain(w)}"},
                            "metrics": metrics})
    return [{"name": _plain(f"{model}-{scheme}"), "results": results}] if results else []


def _plain(s: str) -> str:
    """A name for metadata: letters, digits and . _ - : / ( ) and spaces only (no markup survives)."""
    return re.sub(r"[^A-Za-z0-9._:/() -]+", "_", str(s))[:120]


def _render(run_dir, model, scheme) -> tuple[str, dict]:
    import yaml

    t = load_results(run_dir)           # read once: the card context and the evaluation results share it
    c = _context(t, model, scheme)
    front = dict(c["front_matter"])
    index = model_index(t, c["model"], c["scheme"])
    if index:
        front["model-index"] = index
    if front["base_model"] is None:
        del front["base_model"]
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, default_flow_style=False)
    if c["base_model"] is None:
        comment = " ".join(f"base_model omitted: {c['why_no_base']}.".split())
        head = f"# {comment}\n" + head
    text = make_env().get_template(TEMPLATE).render(hf=c, front_matter=head)
    return text, c


def hf_snippet(run_dir: str | Path, model: str | None = None, scheme: str | None = None) -> str:
    """Markdown (YAML front matter + body) for a Hugging Face model card of one model x scheme of a run.

    `model` is the model's display name in the card (its `name`, else its id), `scheme` the scheme's name;
    either may be left out when the run has only one. Raises ValueError naming the choices when the
    choice is ambiguous or unknown, FileNotFoundError when run_dir is not a run directory.
    """
    return _render(run_dir, model, scheme)[0]


def snippet_name(model: str, scheme: str) -> str:
    """File name of a snippet: hf-<model>-<scheme>.md, with characters unsafe in file names replaced."""
    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("._") or "_"
    return f"hf-{safe(model)}-{safe(scheme)}.md"


def write_hf_snippet(run_dir: str | Path, model: str | None = None, scheme: str | None = None) -> Path:
    """Write hf_snippet(...) atomically as <run_dir>/hf-<model>-<scheme>.md; returns the path."""
    text, c = _render(run_dir, model, scheme)
    path = Path(run_dir) / snippet_name(c["model"], c["scheme"])
    write_atomic(path, text)
    return path
