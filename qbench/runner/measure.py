"""Measurements of one cell: quality on the evaluation samples, paired timing per batch size.

Every row names a metric declared in the metric registry (qbench.results.metrics), which gives its unit and
the variants it is recorded under; `row` refuses anything else. Each row's `method` says how this run
computed the value (timer, repeats, interval), so it stays here with the code that computes it.
"""
from __future__ import annotations

import numpy as np
import torch

from qbench.metrics import stats
from qbench.metrics.lm import per_sequence, prefix_match, python_prefix_ok, time_prefill_decode, token_stats
from qbench.metrics.quality import cosine_per_sample, mean_pool, nn_agreement
from qbench.metrics.timing import time_interleaved
from qbench.results.metrics import metric as declared, row_problem

LEVEL = 0.95
QUALITY_BATCH = 8


def tokenize(tokenizer, texts: list[str], seq_len: int, device: str) -> dict[str, torch.Tensor]:
    """Fixed-shape (B, seq_len) inputs: truncated and padded, so every timing sees seq_len tokens."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def slice_batch(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


@torch.no_grad()
def forward(model, task: str, batch: dict) -> torch.Tensor:
    """Encoder: (B, D) normalized mean-pooled embeddings; causal LM: (B, T, V) logits."""
    out = model(**batch)
    if task == "causal_lm":
        return out.logits
    return mean_pool(out.last_hidden_state, batch["attention_mask"])


@torch.no_grad()
def outputs(model, task: str, batch: dict) -> torch.Tensor:
    """Forward over all samples in chunks; logits kept on CPU in float32."""
    n = batch["input_ids"].shape[0]
    parts = [forward(model, task, slice_batch(batch, i, i + QUALITY_BATCH)).float().cpu()
             for i in range(0, n, QUALITY_BATCH)]
    return torch.cat(parts)


@torch.no_grad()
def lm_reference(model, batch: dict, prompts: torch.Tensor, k: int, generate_tokens: int) -> dict:
    """Baseline top-k reference over the evaluation batch, and its greedy continuations of the prompts."""
    from qbench.metrics.lm import cat_refs, greedy, reference_topk

    n = batch["input_ids"].shape[0]
    parts = []
    for i in range(0, n, QUALITY_BATCH):
        b = slice_batch(batch, i, i + QUALITY_BATCH)
        parts.append(reference_topk(forward(model, "causal_lm", b).float().cpu(), b["input_ids"].cpu(),
                                    b["attention_mask"].cpu(), k))
    gen = None
    if generate_tokens:
        gen = torch.cat([greedy(model, p, generate_tokens).cpu() for p in prompts.split(16)])
    return {"topk": cat_refs(parts), "gen": gen}


@torch.no_grad()
def lm_stats(model, batch: dict, ref: dict) -> dict:
    """Token statistics of a model against a top-k reference, chunk by chunk (no full logits kept)."""
    from qbench.metrics.lm import slice_ref

    n = batch["input_ids"].shape[0]
    parts = []
    for i in range(0, n, QUALITY_BATCH):
        b = slice_batch(batch, i, i + QUALITY_BATCH)
        parts.append(token_stats(slice_ref(ref, i, i + QUALITY_BATCH), forward(model, "causal_lm", b).float().cpu(),
                                 b["input_ids"].cpu()))
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def row(metric: str, value, unit: str, method: str, variant: str = "quantized", batch_size=None,
        ci=(None, None), p10=None, p90=None, n=None) -> dict:
    """One measured number (a results row without its cell columns, which the record stage adds).

    ValueError when the metric is not declared in qbench.results.metrics with this unit, variant and
    per-batch-size-ness: a row the card, the gates and the schema would not know is a bug here."""
    problem = row_problem(metric, unit, variant, batch_size)
    if problem:
        raise ValueError(f"{problem}: declare the metric in qbench/results/metrics.py or fix its producer")
    f = lambda x: None if x is None else float(x)  # noqa: E731
    return {"metric": metric, "value": f(value), "unit": unit, "method": method, "variant": variant,
            "batch_size": batch_size, "ci_low": f(ci[0]), "ci_high": f(ci[1]), "p10": f(p10), "p90": f(p90),
            "n": n}


def measured(metric: str, value, method: str, variant: str = "quantized", batch_size=None, ci=(None, None),
             p10=None, p90=None, n=None) -> dict:
    """row() in the unit the registry declares for the metric."""
    return row(metric, value, declared(metric).unit, method, variant, batch_size, ci, p10, p90, n)


def _timer(device: str) -> str:
    return "CUDA events" if device.startswith("cuda") else "time.perf_counter"


def _median_how(repeats: int, warmup: int, width: float | None = None, cap: int | None = None) -> str:
    adaptive = (f" (adaptive: stopped once the speed-up's 95% CI was narrower than {width:g} of it, or at {cap})"
                if width else "")
    return (f"median of {repeats} repeats{adaptive} interleaved with the other variant after {warmup} warm-up runs; "
            "95% order-statistic CI of the median")


def narrow_enough(width: float, pairs=lambda a, b: [(a, b)]):
    """stop(a, b) for time_interleaved: True once every paired speed-up `pairs(a, b)` yields has a 95% interval
    narrower than `width` times the speed-up (a quick 500-resample bootstrap; the rows' own intervals use the full
    one)."""
    def stop(a: list, b: list) -> bool:
        for x, y in pairs(a, b):
            ratio, lo, hi = stats.paired_ratio(x, y, LEVEL, n_boot=500)
            if not hi - lo < width * ratio:
                return False
        return True
    return stop


def encoder_quality(base: torch.Tensor, quant: torch.Tensor) -> list[dict]:
    cos = cosine_per_sample(base, quant).numpy()
    mean, lo, hi = stats.mean_ci(cos, LEVEL)
    agree, n = nn_agreement(base, quant)
    p, plo, phi = stats.proportion_ci(agree, n, LEVEL)
    return [
        measured("cosine_mean", mean, "mean cosine similarity of quantized vs baseline sentence "
                 "embeddings (mean-pooled, normalized), same inputs; 95% Student-t CI over samples",
                 ci=(lo, hi), n=len(cos)),
        measured("cosine_min", cos.min(), "worst sample's cosine similarity", n=len(cos)),
        measured("nn_agreement", p, "share of samples whose nearest neighbour (cosine, among the "
                 "other evaluation samples) is the same under both models; 95% Wilson CI", ci=(plo, phi), n=n),
    ]


def lm_sequences(s: dict) -> dict:
    """Per evaluation sequence, what scheme-vs-scheme comparisons pair on the same sequences: scored tokens,
    mean KL, mean NLL of both models and top-1 agreement (qbench.report.pairs reads them)."""
    valid = s["valid"]
    return {"tokens": valid.sum(1).tolist(), "kl": per_sequence(s["kl"], valid).tolist(),
            "nll_base": per_sequence(s["nll_base"], valid).tolist(),
            "nll_quant": per_sequence(s["nll_quant"], valid).tolist(),
            "top1": per_sequence(s["top1"], valid).tolist()}


def encoder_sequences(base: torch.Tensor, quant: torch.Tensor) -> dict:
    """Per evaluation sample: the cosine of quantized vs baseline embeddings."""
    return {"cosine": cosine_per_sample(base, quant).tolist()}


def lm_rows(s: dict, k: int, vocab: int) -> list[dict]:
    valid = s["valid"]
    n_tok = valid.sum(1).double().numpy()
    nb, nq = per_sequence(s["nll_base"], valid).numpy(), per_sequence(s["nll_quant"], valid).numpy()
    idx = np.arange(len(n_tok))

    def log_ratio(i):  # token-weighted log(ppl_q / ppl_b) over the sequences in i
        i = np.asarray(i, dtype=int)
        return float(((nq[i] - nb[i]) * n_tok[i]).sum() / n_tok[i].sum())

    ppl = lambda nll: float(np.exp((nll * n_tok).sum() / n_tok.sum()))  # noqa: E731
    lo, hi = stats.bootstrap_ci(idx, stat=log_ratio, level=LEVEL)
    kl = per_sequence(s["kl"], valid).numpy()
    kl_mean, kl_lo, kl_hi = stats.mean_ci(kl, LEVEL)
    top1_seq = per_sequence(s["top1"], valid).numpy()
    top1, t_lo, t_hi = stats.mean_ci(top1_seq, LEVEL)
    seqs, tokens = len(n_tok), int(n_tok.sum())
    tok_kl = s["kl"][valid].numpy()
    dp = s["dp_top"][valid].numpy()
    dp_mean, dp_lo, dp_hi = stats.mean_ci(per_sequence(s["dp_top"], valid).numpy(), LEVEL)
    kl_how = (f"KL(baseline || quantized) over the baseline's top {k} tokens plus one bucket for the rest of "
              f"the {vocab}-token vocabulary (a lower bound of the full KL" + (", here exact" if k >= vocab else "")
              + ")")
    q = lambda p: float(np.quantile(tok_kl, p))  # noqa: E731
    ppl_how = "exp(mean next-token NLL over all scored tokens)"
    return [
        measured("ppl", ppl(nb), ppl_how, variant="baseline", n=tokens),
        measured("ppl", ppl(nq), ppl_how, n=tokens),
        measured("log_ppl_ratio", log_ratio(idx), "log(ppl quantized / ppl baseline) on the same "
                 "tokens; 95% CI by paired bootstrap over sequences", variant="paired", ci=(lo, hi), n=seqs),
        measured("kl_mean", kl_mean, kl_how + "; mean per sequence then over sequences; 95% t CI over "
                 "sequences", ci=(kl_lo, kl_hi), n=seqs),
        measured("kl_median", q(0.5), "median of the per-token KL", n=tokens),
        measured("kl_p90", q(0.9), "90th percentile of the per-token KL", n=tokens),
        measured("kl_p99", q(0.99), "99th percentile of the per-token KL", n=tokens),
        measured("kl_max", float(tok_kl.max()) if len(tok_kl) else None, "largest per-token KL", n=tokens),
        measured("top1_agreement", top1, "share of positions where both models' most likely next "
                 "token agree, per sequence then mean; 95% t CI over sequences", ci=(t_lo, t_hi), n=seqs),
        measured("top1_agreement_se", float(top1_seq.std(ddof=1) / np.sqrt(seqs)) if seqs > 1 else None,
                 "standard error of top1_agreement (sample std of per-sequence agreement / sqrt(sequences))",
                 n=seqs),
        measured("p_top_change", dp_mean, "quantized minus baseline probability of the baseline's "
                 "most likely token; mean per sequence then over sequences, 95% t CI; p10/p90 over tokens",
                 ci=(dp_lo, dp_hi), p10=np.quantile(dp, 0.1) if len(dp) else None,
                 p90=np.quantile(dp, 0.9) if len(dp) else None, n=tokens),
    ]


def generation_rows(base_gen: torch.Tensor, quant_gen: torch.Tensor, prompts: torch.Tensor, tokenizer,
                    python: bool) -> list[dict]:
    """Greedy continuations of the same prompts: prefix agreement and, for code, syntax soundness."""
    match = prefix_match(base_gen, quant_gen).double().numpy()
    g = base_gen.shape[1]
    mean, lo, hi = stats.mean_ci(match, LEVEL)
    exact = int((match == g).sum())
    e, elo, ehi = stats.proportion_ci(exact, len(match), LEVEL)
    rows = [
        measured("gen_prefix_match", mean, f"greedy continuation of {prompts.shape[1]}-token held-out "
                 f"prompts for {g} tokens: leading tokens identical to the baseline's continuation; mean over "
                 "prompts, 95% t CI", ci=(lo, hi), p10=np.quantile(match, 0.1), p90=np.quantile(match, 0.9),
                 n=len(match)),
        measured("gen_exact_match", e, f"share of prompts whose {g}-token greedy continuation equals "
                 "the baseline's; 95% Wilson CI", ci=(elo, ehi), n=len(match)),
    ]
    if python:
        for variant, gen in (("baseline", base_gen), ("quantized", quant_gen)):
            texts = tokenizer.batch_decode(torch.cat([prompts, gen], dim=1), skip_special_tokens=True)
            ok = sum(python_prefix_ok(t) for t in texts)
            p, plo, phi = stats.proportion_ci(ok, len(texts), LEVEL)
            rows.append(measured("gen_parse_rate", p, "share of prompt + greedy continuations that are "
                                 "valid Python up to their last line break (ast.parse; input that merely stops "
                                 "inside an open bracket, block or string counts as valid); 95% Wilson CI",
                                 variant=variant, ci=(plo, phi), n=len(texts)))
    return rows


OWN_FORWARD = "the model's own forward (transformers) with its KV cache"
GRAPH_FORWARD = ("qbench's decoder forward (engine.graph.DecoderGraph: the model's own modules, kernels and "
                 "weights, about 30 ops a layer, a KV cache allocated once)")


def lm_runs(base_model, quant_model, lm_forward: str, batch_size: int, max_tokens: int) -> tuple[list, str]:
    """([baseline run, quantized run], how they ran) for lm_speed_rows (lm_forwards of the pair)."""
    runs, how = lm_forwards({"baseline": base_model, "quantized": quant_model}, lm_forward, batch_size, max_tokens)
    return [runs["baseline"], runs["quantized"]], how


def lm_forwards(models: dict, lm_forward: str, batch_size: int, max_tokens: int) -> tuple[dict, str]:
    """({name: run}, how they ran) for causal LMs timed side by side, the first one the baseline. lm_forward
    "qbench": every torch model through engine.graph.DecoderGraph where it runs them all; where it does not, all
    through the model's own forward, and `how` says why (the sides of a speed-up always run the same way). A peer
    runtime's model runs in its own runtime; the others still take `lm_forward`."""
    every, these = ("both sides", "this pair") if len(models) == 2 else ("every variant", "these variants")
    if lm_forward != "qbench":
        return dict(models), f"{every}: {OWN_FORWARD}"
    from qbench.engine.graph import DecoderGraph, unsupported_reason
    from qbench.runner.cell import peer_state

    peers = [n for n, m in models.items() if peer_state(m) is not None]
    torch_side = {n: m for n, m in models.items() if n not in peers}
    why = next((r for r in (unsupported_reason(m, max_tokens) for m in torch_side.values()) if r), None)
    if why:
        return (dict(models), f"{every}: {OWN_FORWARD} (measure.lm_forward is qbench, but its decoder forward does "
                              f"not run {these}: {why})")
    runs: dict = {}
    for n, m in torch_side.items():                      # the first one picks where the float work runs
        runs[n] = DecoderGraph(m, batch_size, max_tokens, native=next(iter(runs.values())).native if runs else None)
    first = next(iter(runs.values()))
    ops = f"the float work around the linears in {first.float_ops}"
    joins = {f"sibling projections run as one call: {r.joins}" for r in runs.values()}
    joined = joins.pop() if len(joins) == 1 else "; ".join(
        f"{n}: sibling projections run as one call: {r.joins}" for n, r in runs.items())
    how = f"{GRAPH_FORWARD}, {ops}; {joined}"
    if peers:
        return ({n: runs.get(n, models[n]) for n in models},
                f"{', '.join(runs)}: {how}; {', '.join(peers)}: the peer runtime's own")
    return runs, f"{every}: {how}"


def lm_speed_rows(base_model, quant_model, batch: dict, batch_size: int, seq_len: int, decode_tokens: int,
                  warmup: int, repeats: int, device: str, ci_width: float | None = None,
                  lm_forward: str = "transformers") -> list[dict]:
    """Prefill (time to first token) and decode (per output token) timings, interleaved and paired; with
    `ci_width`, until both speed-ups' intervals are that narrow (or `repeats`); run as `lm_forward` says
    (lm_runs)."""
    ids = batch["input_ids"][:batch_size]
    runs, how = lm_runs(base_model, quant_model, lm_forward, batch_size, ids.shape[1] + decode_tokens)
    per_phase = lambda a, b: [([p for p, _ in a], [p for p, _ in b]), ([d for _, d in a], [d for _, d in b])]  # noqa: E731
    t = time_prefill_decode(*runs, ids, decode_tokens, warmup=warmup, repeats=repeats,
                            device=device, stop=narrow_enough(ci_width, per_phase) if ci_width else None)
    rows = []
    for phase, metric, tput, speedup, what, tokens in (
            ("prefill", "latency_ms", "throughput_tok_s", "speedup", f"prefill: one forward pass over {seq_len} "
             "prompt tokens with the KV cache, up to the first output token (time to first token; logits of the "
             "last position only where the model's forward takes logits_to_keep)",
             batch_size * seq_len),
            ("decode", "decode_ms_per_token", "decode_tok_s", "decode_speedup", f"decode: {decode_tokens} greedy "
             f"steps with the KV cache after a {seq_len}-token prompt, divided by {decode_tokens} (time per output "
             "token)", batch_size)):
        pair = []
        for variant, key in (("baseline", f"{phase}_base"), ("quantized", f"{phase}_quant")):
            ms = t[key]
            pair.append(ms)
            s = stats.summarize(ms)
            lo, hi = stats.median_ci(ms, LEVEL)
            rows.append(measured(metric, s["median"], f"{_timer(device)}; {what}; {how}; "
                                 f"{_median_how(len(ms), warmup, ci_width, repeats)}",
                                 variant, batch_size, (lo, hi), s["p10"], s["p90"], len(ms)))
            rows.append(measured(tput, tokens / s["median"] * 1e3, f"{phase} tokens per second: "
                                 f"{'batch x prompt tokens' if phase == 'prefill' else 'batch size'} / median "
                                 "latency; CI from the latency CI", variant, batch_size,
                                 (tokens / hi * 1e3, tokens / lo * 1e3), n=len(ms)))
        ratio, lo, hi = stats.paired_ratio(pair[0], pair[1], LEVEL)
        rows.append(measured(speedup, ratio, f"median baseline / median quantized {phase} latency; 95% CI by "
                             "paired bootstrap over interleaved repeat pairs", "paired", batch_size, (lo, hi),
                             n=len(pair[0])))
    return rows


def speed_rows(base_model, quant_model, task: str, batch: dict, batch_size: int, seq_len: int,
               warmup: int, repeats: int, device: str, ci_width: float | None = None) -> list[dict]:
    """Paired, interleaved timing of one forward pass of a (batch_size, seq_len) batch; with `ci_width`, until
    the speed-up's interval is that narrow (or `repeats`)."""
    b = slice_batch(batch, 0, batch_size)
    base_ms, quant_ms = time_interleaved(lambda: forward(base_model, task, b),
                                         lambda: forward(quant_model, task, b),
                                         warmup=warmup, repeats=repeats, device=device,
                                         stop=narrow_enough(ci_width) if ci_width else None)
    rows = []
    for variant, ms in (("baseline", base_ms), ("quantized", quant_ms)):
        s = stats.summarize(ms)
        lo, hi = stats.median_ci(ms, LEVEL)
        rows.append(measured("latency_ms", s["median"], f"{_timer(device)} around one forward pass; "
                             f"{_median_how(len(ms), warmup, ci_width, repeats)}", variant, batch_size, (lo, hi),
                             s["p10"], s["p90"], len(ms)))
        tokens = batch_size * seq_len
        rows.append(measured("throughput_tok_s", tokens / s["median"] * 1e3,
                             "batch tokens / median latency; CI from the latency CI", variant, batch_size,
                             (tokens / hi * 1e3, tokens / lo * 1e3), n=len(ms)))
    ratio, lo, hi = stats.paired_ratio(base_ms, quant_ms, LEVEL)
    rows.append(measured("speedup", ratio, "median baseline latency / median quantized latency; 95% CI "
                         "by paired bootstrap over interleaved repeat pairs", "paired", batch_size, (lo, hi),
                         n=len(base_ms)))
    return rows
