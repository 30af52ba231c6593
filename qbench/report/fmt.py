"""Formatting and lookup helpers shared by the card's sections (plain data, no torch)."""
from __future__ import annotations

import math
from datetime import datetime

CARD_SCHEMA_VERSION = 1
DASH = "—"
SIZE_METRICS = ("weight_bytes", "peak_rss_bytes", "cuda_max_allocated_bytes", "cuda_max_reserved_bytes")
PRIMARY = {"encoder": ("cosine_mean", "cosine"), "causal_lm": ("log_ppl_ratio", "log-PPL ratio")}
FIXED4 = {"cosine_mean", "cosine_min", "nn_agreement", "top1_agreement", "gen_exact_match", "gen_parse_rate"}
NOISE_LIMIT = 0.25
CONTENDED = 0.25  # foreign CPU cores while timing above which a cell is flagged
MIN_EVAL = 30
GLOSSARY = {
    "latency_ms": "Wall-clock time of one forward pass over a batch (median of the timed repeats); for causal "
                  "LMs the prefill up to the first output token (time to first token).",
    "throughput_tok_s": "Tokens processed per second: batch size x sequence length / latency.",
    "speedup": "Baseline latency / quantized latency; above 1 means the quantized model is faster.",
    "weight_bytes": "Bytes of model weights held in memory.",
    "peak_rss_bytes": "Peak resident memory of the process while the cell ran.",
    "foreign_cpu_cores": "CPU cores busy with other processes while the cell was timed (0 = quiet machine).",
    "cosine_mean": "Mean cosine similarity of quantized vs baseline embeddings (1 = identical).",
    "cosine_min": "Lowest cosine similarity over the evaluation samples.",
    "nn_agreement": "Share of samples whose nearest neighbour is the same for both models.",
    "ppl": "Perplexity on the evaluation text.",
    "log_ppl_ratio": "log(quantized perplexity / baseline perplexity); 0 means no change.",
    "kl_mean": "Mean per-token KL divergence of quantized from baseline next-token distributions.",
    "kl_p99": "99th percentile of the per-token KL divergence.",
    "top1_agreement": "Share of tokens whose top-1 prediction matches the baseline.",
    "top1_agreement_se": "Standard error of top1_agreement over sequences.",
    "kl_median": "Median of the per-token KL divergence.",
    "kl_p90": "90th percentile of the per-token KL divergence.",
    "kl_max": "Largest per-token KL divergence.",
    "p_top_change": "Change in the probability of the baseline's most likely token (quantized minus baseline).",
    "gen_prefix_match": "Leading tokens of a greedy continuation identical to the baseline's continuation.",
    "gen_exact_match": "Share of prompts whose whole greedy continuation equals the baseline's.",
    "gen_parse_rate": "Share of prompt + continuations that are still valid Python (code workloads).",
    "decode_ms_per_token": "Time per output token while decoding with the KV cache (causal LMs).",
    "decode_tok_s": "Output tokens per second while decoding: batch size / time per output token.",
    "decode_speedup": "Baseline / quantized time per output token; above 1 means faster decoding.",
    "cuda_max_allocated_bytes": "Peak GPU memory held by tensors during the cell (torch.cuda.max_memory_allocated).",
    "cuda_max_reserved_bytes": "Peak GPU memory reserved by torch's caching allocator during the cell.",
    "energy_mj_per_token": "GPU energy per token from NVML's energy counter, in millijoules (idle power included).",
    "energy_ratio": "Baseline / quantized energy per token; above 1 means the quantized model uses less energy.",
}


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


def fmt(x, metric: str | None = None) -> str:
    if num(x) is None:
        return DASH
    if metric in FIXED4:
        return f"{num(x):.4f}"
    if metric == "speedup":
        return f"{num(x):.2f}x"
    if metric in SIZE_METRICS:
        return mib(x)
    return sig(x)


def with_ci(row, metric: str | None = None) -> str:
    if not row or num(row.get("value")) is None:
        return DASH
    m = metric or row.get("metric")
    out = fmt(row["value"], m)
    if num(row.get("ci_low")) is not None and num(row.get("ci_high")) is not None:
        out += f" [{fmt(row['ci_low'], m).rstrip('x')}, {fmt(row['ci_high'], m).rstrip('x')}]"
    return out


def table(columns, rows, align=None) -> dict:
    rows = [r if isinstance(r, dict) else {"cells": r, "flag": False} for r in rows]
    return {"columns": list(columns), "align": align or "l" * len(columns),
            "rows": [{"cells": [str(c) for c in r["cells"]], "flag": bool(r["flag"])} for r in rows]}


class Index:
    """Row lookup by (model, scheme, workload, metric, variant, batch_size); variant None = any."""

    def __init__(self, rows):
        self.rows = rows
        self._by: dict = {}
        for r in rows:
            k = (r["model"], r["scheme"], r["workload"], r["metric"])
            self._by.setdefault(k + (r["variant"], r["batch_size"]), r)
            self._by.setdefault(k + (None, r["batch_size"]), r)

    def get(self, model, scheme, workload, metric, variant=None, bs=None):
        return self._by.get((model, scheme, workload, metric, variant, bs))

    def batch_sizes(self, model, scheme, workload):
        return sorted({r["batch_size"] for r in self.rows if r["batch_size"] is not None
                       and (r["model"], r["scheme"], r["workload"]) == (model, scheme, workload)})

    def speed_workload(self, model, scheme, workloads):
        """The first workload (in experiment order) with speed rows for model x scheme."""
        return next((w for w in workloads if self.batch_sizes(model, scheme, w)), None)


def _ordered(first, more):
    out = [x for x in first if x is not None]
    return out + [x for x in dict.fromkeys(more) if x is not None and x not in out]


def _when(s) -> str:
    try:
        return datetime.fromisoformat(s).isoformat(sep=" ", timespec="seconds")
    except (TypeError, ValueError):
        return s or DASH


def _overlap(a, b) -> bool | None:
    lo_a, hi_a, lo_b, hi_b = (num(r.get(k)) for r in (a, b) for k in ("ci_low", "ci_high"))
    if None in (lo_a, hi_a, lo_b, hi_b):
        return None
    return lo_a <= hi_b and lo_b <= hi_a
