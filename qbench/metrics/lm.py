"""Causal-LM measurements: baseline top-k references, token statistics, greedy generation, prefill/decode.

The baseline's next-token distributions are kept as the top-k tokens per position (ids and float64
log-probabilities) plus the log-probability of the token that actually follows, never as full logits.
KL(baseline || quantized) is computed over the k baseline tokens plus one bucket holding the rest of
the vocabulary: by the data-processing inequality this is a lower bound of the full KL, equal to it
when the k tokens carry all the mass (k >= vocabulary). With k = 128 the rest of a trained model's
vocabulary typically holds well under 1% of the mass.
"""
from __future__ import annotations

import ast
import hashlib
import json
import time
from typing import Callable, Optional

import torch

from qbench.atomic import atomic_path
from qbench.cache import cache_dir
from qbench.metrics.timing import time_interleaved

# SyntaxError messages that mean "the input ended too early", not "the input is wrong"
_INCOMPLETE = ("was never closed", "unexpected eof", "expected an indented block", "unterminated triple-quoted",
               "incomplete input")


# ---------------------------------------------------------------- references
def reference_topk(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, k: int) -> dict:
    """Top-k summary of a baseline's next-token distributions.

    logits (B, T, V) predicting input_ids[:, 1:]; returns float64 ``logp`` (B, T-1, k), int64 ``idx``
    (B, T-1, k) sorted by decreasing probability, ``target_logp`` (B, T-1) of the actual next token and
    bool ``valid`` (B, T-1) for positions where both tokens are real (not padding).
    """
    lp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    k = min(k, lp.shape[-1])
    top, idx = lp.topk(k, dim=-1, sorted=True)
    target = input_ids[:, 1:]
    return {"logp": top, "idx": idx, "target_logp": lp.gather(-1, target.unsqueeze(-1)).squeeze(-1),
            "valid": (mask[:, 1:] * mask[:, :-1]).bool(), "k": k, "vocab": lp.shape[-1]}


def slice_ref(ref: dict, lo: int, hi: int) -> dict:
    return {key: (v[lo:hi] if isinstance(v, torch.Tensor) else v) for key, v in ref.items()}


def cat_refs(parts: list[dict]) -> dict:
    out = {key: torch.cat([p[key] for p in parts]) for key in ("logp", "idx", "target_logp", "valid")}
    out.update(k=parts[0]["k"], vocab=parts[0]["vocab"])
    return out


def token_stats(ref: dict, quant_logits: torch.Tensor, input_ids: torch.Tensor) -> dict:
    """Per-position statistics of quantized next-token predictions against a top-k baseline.

    Returns (B, T-1) float64 tensors ``nll_base``, ``nll_quant``, ``kl`` (top-k + rest bucket),
    ``top1`` (1.0 where the quantized argmax is the baseline's), ``dp_top`` (quantized minus baseline
    probability of the baseline's most likely token) and the bool ``valid`` mask.
    """
    lq = torch.log_softmax(quant_logits[:, :-1].double(), dim=-1)
    lb, idx = ref["logp"], ref["idx"]
    lq_k = lq.gather(-1, idx)
    pb = lb.exp()
    kl = (pb * (lb - lq_k)).sum(-1)
    if ref["k"] < ref["vocab"]:  # the rest of the vocabulary as one bucket
        rest_b = (1 - pb.sum(-1)).clamp(min=0)
        rest_q = (1 - lq_k.exp().sum(-1)).clamp(min=0)
        tail = torch.where(rest_b > 0, rest_b * (rest_b.log() - rest_q.clamp(min=1e-300).log()),
                           torch.zeros_like(rest_b))
        kl = kl + tail
    target = input_ids[:, 1:]
    return {"nll_base": -ref["target_logp"], "nll_quant": -lq.gather(-1, target.unsqueeze(-1)).squeeze(-1),
            "kl": kl.clamp(min=0), "top1": (lq.argmax(-1) == idx[..., 0]).double(),
            "dp_top": lq_k[..., 0].exp() - pb[..., 0], "valid": ref["valid"]}


def per_sequence(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T) values, (B, T) mask -> (B,) mean over each sequence's valid positions."""
    v = valid.double()
    return (values * v).sum(1) / v.sum(1).clamp(min=1)


# ---------------------------------------------------------------- the reference cache
def model_fingerprint(model, tokenizer) -> str:
    """sha256 over the model's parameters and buffers (names, dtypes, shapes, bytes) and the tokenizer vocab."""
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=True).encode())
    return h.hexdigest()


def reference_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_or_compute(key: str, describe: dict, compute: Callable[[], dict],
                    log: Optional[Callable[[str], None]] = None) -> tuple[dict, str]:
    """The cached reference for ``key`` when present and intact, else computed and stored atomically.

    Returns (reference, "hit" | "miss"). A cache that cannot be written is reported, never fatal.
    """
    path = cache_dir() / "lm_reference" / f"{key}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                return blob["ref"], "hit"
        except Exception as e:  # a torn or foreign file: recompute
            if log:
                log(f"ignoring unreadable reference cache {path.name}: {type(e).__name__}")
    ref = compute()
    try:
        with atomic_path(path) as tmp:
            torch.save({"key": key, "describe": describe, "ref": ref}, tmp)
    except OSError as e:
        if log:
            log(f"could not write the reference cache {path}: {e}")
    return ref, "miss"


# ---------------------------------------------------------------- generation and decode timing
def _kv_cache(out):
    """The KV cache a forward returned: `cache` in newer transformers, `past_key_values` before (still read
    there with a deprecation warning on every step)."""
    return out["cache"] if "cache" in out else out.past_key_values


def cache_keyword(model) -> str:
    """The keyword the model's forward takes a KV cache under: `cache` in newer transformers, `past_key_values`
    before (look it up once, not inside a timed loop)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode_step(model) -> Callable:
    """step(nxt, cache): one decode step of the (B,) tokens nxt on top of cache, passed under the keyword the
    model's forward takes."""
    key = cache_keyword(model)
    return lambda nxt, cache: model(input_ids=nxt[:, None], use_cache=True, **{key: cache})


def _prefill(model) -> Callable:
    """prefill(ids): the forward over a prompt that starts generation. Only the last position's logits are
    asked for where the model's forward takes `logits_to_keep` (as transformers' generate does), so a prefill
    does not pay for an output projection of every prompt position that nothing reads."""
    import inspect

    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return lambda ids: model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return lambda ids: model(input_ids=ids, use_cache=True)


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """(B, P) prompt -> (B, new_tokens) greedy continuation, with the model's KV cache (ModelRun)."""
    run = ModelRun(model)
    toks = [run.prefill(prompt).argmax(-1)]
    for _ in range(new_tokens - 1):
        toks.append(run.step(toks[-1]).argmax(-1))
    return torch.stack(toks, dim=1)


def prefix_match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, G), (B, G) token ids -> (B,) number of leading positions where they agree."""
    same = (a == b).long()
    return same.cumprod(dim=1).sum(dim=1)


def python_prefix_ok(text: str) -> bool:
    """Whether text, cut at its last line break, is valid Python or a valid beginning of it.

    A continuation that stops inside an open bracket, block or triple-quoted string still counts as
    syntactically sound; one that contains a real syntax error does not.
    """
    cut = text[: text.rfind("\n") + 1] if "\n" in text else text
    try:
        ast.parse(cut)
        return True
    except SyntaxError as e:
        msg = (e.msg or "").lower()
        if any(s in msg for s in _INCOMPLETE):
            return True
        lines = cut.rstrip("\n").count("\n") + 1
        return (e.lineno or 0) > lines  # error reported past the end: the input simply stops
    except (ValueError, MemoryError, RecursionError):
        return False


class ModelRun:
    """A causal LM run through its own forward and KV cache (transformers', or a peer runtime's model that
    answers like one), as prefill_decode drives it: prefill(ids) -> (B, vocab) last-position logits, then
    step(tokens (B,)) -> (B, vocab) logits of the next position."""

    def __init__(self, model):
        self._prefill, self._step, self.cache = _prefill(model), _decode_step(model), None

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        out = self._prefill(ids)
        self.cache = _kv_cache(out)
        return out.logits[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self._step(tokens, self.cache)
        self.cache = _kv_cache(out)
        return out.logits[:, -1]


def as_run(model):
    """A model (a torch module) as a ModelRun; anything else is taken as a run already (prefill, step)."""
    return ModelRun(model) if isinstance(model, torch.nn.Module) else model


@torch.no_grad()
def prefill_decode(model, ids: torch.Tensor, decode_tokens: int, sync: Callable[[], None],
                   cuda_events: bool = False) -> tuple[float, float]:
    """Milliseconds of the prefill of ids (B, T) up to the first token, and of decode_tokens more steps, of a
    model (through its own forward, ModelRun) or of a run with the same prefill/step (engine.graph's
    DecoderGraph).

    With cuda_events the marks are CUDA events on the current stream (read after one final synchronization),
    otherwise perf_counter after a synchronization at each mark.
    """
    run = as_run(model)
    sync()
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda_events else []
    stamp = (lambda i: marks[i].record()) if cuda_events else (lambda i: sync() or time.perf_counter())
    t0 = stamp(0)
    nxt = run.prefill(ids).argmax(-1)
    t1 = stamp(1)
    for _ in range(decode_tokens):
        nxt = run.step(nxt).argmax(-1)
    t2 = stamp(2)
    if cuda_events:
        sync()
        return marks[0].elapsed_time(marks[1]), marks[1].elapsed_time(marks[2])
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def time_prefill_decode(base, quant, ids: torch.Tensor, decode_tokens: int, *, warmup: int, repeats: int,
                        device: str, stop=None) -> dict[str, list[float]]:
    """Interleaved (A,B then B,A) prefill/decode timings of both models (or runs: as_run) on the same ids.
    `stop(a, b)` may end them early (metrics.timing.time_interleaved), on lists of (prefill ms, decode ms) pairs."""
    cuda = device.startswith("cuda")
    if cuda:
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        sync = lambda: None  # noqa: E731
    base, quant = as_run(base), as_run(quant)
    a, b = time_interleaved(lambda: prefill_decode(base, ids, decode_tokens, sync, cuda_events=cuda),
                            lambda: prefill_decode(quant, ids, decode_tokens, sync, cuda_events=cuda),
                            warmup=warmup, repeats=repeats, timer=lambda fn: fn(), stop=stop)
    per_token = max(1, decode_tokens)
    return {"prefill_base": [p for p, _ in a], "prefill_quant": [p for p, _ in b],
            "decode_base": [d / per_token for _, d in a], "decode_quant": [d / per_token for _, d in b]}
