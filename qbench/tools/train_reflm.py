"""Train qbench's reference causal LM ("reflm") offline, reproducibly.

    python -m qbench.tools.train_reflm --out qbench/assets/reflm
    (python -m qbench.models.train_reflm, its old name, runs the same)

A small GPT-2 (transformers' GPT2LMHeadModel) and a byte-level BPE tokenizer (the ``tokenizers`` library),
both trained on the corpus of :mod:`qbench.datasets.corpus`: Python code and English prose
that ship with CPython and with qbench's own runtime dependencies, never a source file of the built-in
evaluation and calibration suites (checked when the corpus is built, and recorded).

A tool, not a library layer: it is the one place that needs both the datasets (the corpus, the held-out
pools) and a model, so it sits beside ``qbench.bench`` rather than inside ``qbench.models``, which may not
import ``qbench.datasets``. Everything is seeded; the script writes the model (safetensors), the tokenizer,
``training.json`` (sources with sha256, steps, tokens, losses, held-out perplexities, versions) and a model
card ``README.md``. A checkpoint is written every ``--checkpoint-every`` steps (default 500) and ``--resume``
continues from it, so an interrupted run loses little.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qbench.datasets import Doc, load_suite, training_corpus
from qbench.datasets.corpus import package_versions
from qbench.tools.reflm_card import model_card

EOS = "<|endoftext|>"
CHECKPOINT_EVERY = 500  # steps between checkpoints (--checkpoint-every)


@dataclass(frozen=True)
class Config:
    vocab_size: int = 8192
    n_positions: int = 256
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    block: int = 256
    batch: int = 16
    steps: int = 1800
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    max_file_bytes: int = 200_000
    heldout_samples: int = 64
    heldout_seq_len: int = 128


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(docs: list[Doc], cfg: Config):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator((d.text for d in docs), vocab_size=cfg.vocab_size, min_frequency=2,
                            special_tokens=[EOS], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                  pad_token=EOS, model_max_length=cfg.n_positions)
    tok.padding_side = "right"
    return tok


def encode(tok, docs: list[Doc]):
    import numpy as np

    eos = tok.convert_tokens_to_ids(EOS)
    ids = tok([d.text for d in docs], add_special_tokens=False)["input_ids"]
    out = []
    for seq in ids:
        out.extend(seq)
        out.append(eos)
    return np.asarray(out, dtype=np.int32)


# ---------------------------------------------------------------- model and training
def build_model(cfg: Config, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    mc = GPT2Config(vocab_size=vocab, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                    attn_pdrop=cfg.dropout, bos_token_id=0, eos_token_id=0,  # EOS is the first special token
                    tie_word_embeddings=True)
    return GPT2LMHeadModel(mc)


def lr_at(step: int, cfg: Config) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def heldout_ppl(model, tok, cfg: Config) -> dict:
    """Perplexity on the built-in evaluation pools, at the seq_len the default experiment uses."""
    import torch

    out = {}
    model.eval()
    for spec in ("builtin:text", "builtin:code"):
        suite = load_suite(spec, calibration_size=0, evaluation_size=cfg.heldout_samples, seed=0)
        enc = tok([s.text for s in suite.evaluation], padding="max_length", truncation=True,
                  max_length=cfg.heldout_seq_len, return_tensors="pt")
        nll, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(suite.evaluation), 8):
                ids, mask = enc["input_ids"][i:i + 8], enc["attention_mask"][i:i + 8]
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
                lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                valid = (mask[:, 1:] * mask[:, :-1]).bool()
                nll -= float(lp[valid].sum())
                n += int(valid.sum())
        out[spec] = {"ppl": math.exp(nll / n), "tokens": n, "samples": len(suite.evaluation),
                     "seq_len": cfg.heldout_seq_len, "evaluation_hash": suite.evaluation_hash}
    model.train()
    return out


def train(cfg: Config, out: Path, *, resume: bool = False, threads: int | None = None,
          checkpoint_every: int = CHECKPOINT_EVERY, log=print) -> dict:
    """Train (or resume) the reference LM into out; threads, if given, hold only while it trains.

    A checkpoint (out/checkpoint.pt) is written every `checkpoint_every` steps before the last and removed
    when training ends; `resume` continues from it. The cadence changes no result: the batches come from a
    generator whose state the checkpoint carries.
    """
    import torch

    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(cfg, out, resume=resume, checkpoint_every=checkpoint_every, log=log)
    finally:
        torch.set_num_threads(before)


def _train(cfg: Config, out: Path, *, resume: bool, checkpoint_every: int, log) -> dict:
    import numpy as np
    import torch

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    docs = training_corpus(cfg.max_file_bytes)
    log(f"corpus: {len(docs)} documents, {sum(len(d.text) for d in docs) / 1e6:.1f} M characters")
    tok = train_tokenizer(docs, cfg)
    # a held-out 1% of training documents (by source) tracks overfitting during training
    val_docs = [d for d in docs if int(hashlib.sha256(d.source.encode()).hexdigest()[:8], 16) % 100 == 0]
    train_docs = [d for d in docs if d not in set(val_docs)]
    data = torch.from_numpy(encode(tok, train_docs).astype(np.int64))
    val = torch.from_numpy(encode(tok, val_docs).astype(np.int64))
    log(f"tokens: {len(data):,} train, {len(val):,} validation; vocab {len(tok)}")
    model = build_model(cfg, len(tok))
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e6:.2f} M parameters")
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, running = 0, [], None
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, history = state["step"], state["history"]
        running = state.get("running")  # the loss EMA goes on where it stopped (older checkpoints lack it)
        log(f"resumed at step {step}")
    model.train()
    n_windows = len(data) - cfg.block - 1
    t0, step0 = time.time(), step
    while step < cfg.steps:
        starts = torch.randint(0, n_windows, (cfg.batch,), generator=gen)
        x = torch.stack([data[s:s + cfg.block] for s in starts.tolist()])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        lv = loss.item()
        running = lv if running is None else 0.98 * running + 0.02 * lv
        if step % 100 == 0 or step == cfg.steps:
            vl = _val_loss(model, val, cfg)
            history.append({"step": step, "train_loss_ema": round(running, 4), "val_loss": round(vl, 4),
                            "lr": lr_at(step - 1, cfg)})
            rate = (step - step0) * cfg.batch * cfg.block / max(1e-9, time.time() - t0)
            log(f"step {step}/{cfg.steps} train {running:.3f} val {vl:.3f} ({rate:,.0f} tok/s)")
        if step % checkpoint_every == 0 and step < cfg.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "step": step, "history": history, "running": running}, ckpt)
            log(f"checkpoint at step {step}")
    model.eval()
    heldout = heldout_ppl(model, tok, cfg)
    for spec, h in heldout.items():
        log(f"held-out {spec}: perplexity {h['ppl']:.2f} over {h['tokens']} tokens")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    record = {
        "model": "reflm", "architecture": "GPT2LMHeadModel", "parameters": params, "config": cfg.__dict__,
        "steps": step, "tokens_seen": step * cfg.batch * cfg.block,
        "corpus": {"documents": len(train_docs), "validation_documents": len(val_docs),
                   "train_tokens": len(data), "validation_tokens": len(val),
                   "characters": sum(len(d.text) for d in docs),
                   "sha256": hashlib.sha256("\n".join(d.sha256 for d in docs).encode()).hexdigest(),
                   "sources": [{"source": d.source, "kind": d.kind, "sha256": d.sha256} for d in docs]},
        "final": {"train_loss_ema": history[-1]["train_loss_ema"] if history else None,
                  "val_loss": history[-1]["val_loss"] if history else None},
        "history": history, "heldout": heldout,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": importlib.metadata.version("transformers"),
                     "tokenizers": importlib.metadata.version("tokenizers"),
                     **package_versions()},
        "wall_seconds": round(time.time() - t_start, 1), "threads": torch.get_num_threads(),
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(record, EOS), encoding="utf-8")
    for f in out.iterdir():  # shipped files are world-readable whatever the umask of the writer
        if f.is_file():
            f.chmod(0o644)
    if ckpt.exists():
        ckpt.unlink()
    return record


def _val_loss(model, val, cfg: Config) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, min(len(val) - cfg.block - 1, 64 * cfg.block), cfg.block * 8):
            x = torch.stack([val[s + i * cfg.block: s + (i + 1) * cfg.block]
                             for i in range(8) if s + (i + 1) * cfg.block <= len(val)])
            total += float(model(input_ids=x, labels=x).loss) * len(x)
            n += len(x)
    model.train()
    return total / max(1, n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=Config.steps)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    ap.add_argument("--checkpoint-every", type=_positive, default=CHECKPOINT_EVERY, metavar="STEPS",
                    help=f"write OUT/checkpoint.pt every STEPS steps (default {CHECKPOINT_EVERY})")
    ap.add_argument("--small", action="store_true", help="a tiny configuration for smoke tests")
    a = ap.parse_args(argv)
    cfg = small_config(a.steps) if a.small else Config(steps=a.steps)
    train(cfg, a.out, resume=a.resume, threads=a.threads, checkpoint_every=a.checkpoint_every)
    return 0


def small_config(steps: int) -> Config:
    """A tiny configuration for smoke tests (--small): seconds, not an hour."""
    return Config(steps=steps, vocab_size=512, n_embd=32, n_layer=1, n_head=2, block=32, batch=4, warmup=2,
                  heldout_samples=8, heldout_seq_len=32, max_file_bytes=20_000)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


if __name__ == "__main__":
    sys.exit(main())
