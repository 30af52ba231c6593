"""Measurements of one cell: quality on the evaluation samples, paired timing per batch size."""
from __future__ import annotations

import numpy as np
import torch

from qbench.metrics import stats
from qbench.metrics.quality import cosine_per_sample, lm_token_stats, mean_pool, nn_agreement
from qbench.metrics.timing import time_interleaved

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


def row(metric: str, value, unit: str, method: str, variant: str = "quantized", batch_size=None,
        ci=(None, None), p10=None, p90=None, n=None) -> dict:
    f = lambda x: None if x is None else float(x)  # noqa: E731
    return {"metric": metric, "value": f(value), "unit": unit, "method": method, "variant": variant,
            "batch_size": batch_size, "ci_low": f(ci[0]), "ci_high": f(ci[1]), "p10": f(p10), "p90": f(p90),
            "n": n}


def encoder_quality(base: torch.Tensor, quant: torch.Tensor) -> list[dict]:
    cos = cosine_per_sample(base, quant).numpy()
    mean, lo, hi = stats.mean_ci(cos, LEVEL)
    agree, n = nn_agreement(base, quant)
    p, plo, phi = stats.proportion_ci(agree, n, LEVEL)
    return [
        row("cosine_mean", mean, "cosine", "mean cosine similarity of quantized vs baseline sentence "
            "embeddings (mean-pooled, normalized), same inputs; 95% Student-t CI over samples",
            ci=(lo, hi), n=len(cos)),
        row("cosine_min", cos.min(), "cosine", "worst sample's cosine similarity", n=len(cos)),
        row("nn_agreement", p, "share", "share of samples whose nearest neighbour (cosine, among the "
            "other evaluation samples) is the same under both models; 95% Wilson CI", ci=(plo, phi), n=n),
    ]


def lm_quality(base: torch.Tensor, quant: torch.Tensor, batch: dict) -> list[dict]:
    s = lm_token_stats(base, quant, batch["input_ids"].cpu(), batch["attention_mask"].cpu())
    n_tok = s["n_tokens"].double().numpy()
    nb, nq = s["nll_base"].numpy(), s["nll_quant"].numpy()
    idx = np.arange(len(n_tok))

    def log_ratio(i):  # token-weighted log(ppl_q / ppl_b) over the sequences in i
        i = np.asarray(i, dtype=int)
        return float(((nq[i] - nb[i]) * n_tok[i]).sum() / n_tok[i].sum())

    ppl = lambda nll: float(np.exp((nll * n_tok).sum() / n_tok.sum()))  # noqa: E731
    lo, hi = stats.bootstrap_ci(idx, stat=log_ratio, level=LEVEL)
    kl = s["kl"].numpy()
    kl_mean, kl_lo, kl_hi = stats.mean_ci(kl, LEVEL)
    top1, t_lo, t_hi = stats.mean_ci(s["top1"].numpy(), LEVEL)
    seqs, tokens = len(n_tok), int(n_tok.sum())
    tok_kl = s["kl_tokens"].numpy()
    return [
        row("ppl", ppl(nb), "ppl", "exp(mean next-token NLL over all scored tokens)", variant="baseline",
            n=tokens),
        row("ppl", ppl(nq), "ppl", "exp(mean next-token NLL over all scored tokens)", n=tokens),
        row("log_ppl_ratio", log_ratio(idx), "nats", "log(ppl quantized / ppl baseline) on the same "
            "tokens; 95% CI by paired bootstrap over sequences", variant="paired", ci=(lo, hi), n=seqs),
        row("kl_mean", kl_mean, "nats", "KL(baseline || quantized) of next-token distributions, mean "
            "per sequence then over sequences; 95% t CI over sequences", ci=(kl_lo, kl_hi), n=seqs),
        row("kl_p99", np.quantile(tok_kl, 0.99), "nats", "99th percentile of per-token KL", n=tokens),
        row("top1_agreement", top1, "share", "share of positions where both models' most likely next "
            "token agree, per sequence then mean; 95% t CI over sequences", ci=(t_lo, t_hi), n=seqs),
    ]


def speed_rows(base_model, quant_model, task: str, batch: dict, batch_size: int, seq_len: int,
               warmup: int, repeats: int, device: str) -> list[dict]:
    """Paired, interleaved timing of one forward pass of a (batch_size, seq_len) batch."""
    b = slice_batch(batch, 0, batch_size)
    base_ms, quant_ms = time_interleaved(lambda: forward(base_model, task, b),
                                         lambda: forward(quant_model, task, b),
                                         warmup=warmup, repeats=repeats, device=device)
    timer = "CUDA events" if device.startswith("cuda") else "time.perf_counter"
    rows = []
    for variant, ms in (("baseline", base_ms), ("quantized", quant_ms)):
        s = stats.summarize(ms)
        lo, hi = stats.median_ci(ms, LEVEL)
        rows.append(row("latency_ms", s["median"], "ms", f"{timer} around one forward pass; median of "
                        f"{repeats} repeats interleaved with the other variant after {warmup} warm-up "
                        "runs; 95% order-statistic CI of the median", variant, batch_size, (lo, hi),
                        s["p10"], s["p90"], len(ms)))
        tokens = batch_size * seq_len
        rows.append(row("throughput_tok_s", tokens / s["median"] * 1e3, "tokens/s",
                        "batch tokens / median latency; CI from the latency CI", variant, batch_size,
                        (tokens / hi * 1e3, tokens / lo * 1e3), n=len(ms)))
    ratio, lo, hi = stats.paired_ratio(base_ms, quant_ms, LEVEL)
    rows.append(row("speedup", ratio, "x", "median baseline latency / median quantized latency; 95% CI "
                    "by paired bootstrap over interleaved repeat pairs", "paired", batch_size, (lo, hi),
                    n=len(base_ms)))
    return rows
