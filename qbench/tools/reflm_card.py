"""The model card (README.md) that the reference LM's training writes beside the weights, from its record."""
from __future__ import annotations

from qbench.datasets.corpus import PACKAGES


def model_card(r: dict, eos: str) -> str:
    """The model card (README.md) of a training record (training.json); `eos` is the tokenizer's special token."""
    c = r["config"]
    code = sum(1 for s in r["corpus"]["sources"] if s["kind"] == "code")
    text = len(r["corpus"]["sources"]) - code
    lines = [
        "# reflm: qbench's reference causal LM", "",
        "A small GPT-2-architecture model trained offline by `python -m qbench.tools.train_reflm` so that "
        "qbench can measure what quantization does to a causal LM's text and code predictions without a "
        "model hub. It is a measurement fixture, not a useful language model.", "",
        "| | |", "|---|---|",
        f"| architecture | GPT2LMHeadModel, {c['n_layer']} layers, width {c['n_embd']}, {c['n_head']} heads, "
        f"context {c['n_positions']}, tied embeddings |",
        f"| parameters | {r['parameters']:,} |",
        f"| tokenizer | byte-level BPE (`tokenizers`), vocabulary {c['vocab_size']}, `{eos}` as bos/eos/pad |",
        f"| training | {r['steps']:,} steps of {c['batch']} x {c['block']} tokens ({r['tokens_seen']:,} tokens), "
        f"AdamW lr {c['lr']} cosine to {c['min_lr_ratio']:g}x, warm-up {c['warmup']}, weight decay "
        f"{c['weight_decay']}, dropout {c['dropout']}, seed {c['seed']} |",
        f"| corpus | {code} Python files and {text} prose documents (docstrings, package descriptions), "
        f"{r['corpus']['characters'] / 1e6:.1f} M characters, {r['corpus']['train_tokens']:,} training tokens; "
        f"sha256 {r['corpus']['sha256'][:16]}... |",
        f"| final loss | train (EMA) {r['final']['train_loss_ema']}, validation {r['final']['val_loss']} nats/token |",
        f"| wall time | {r['wall_seconds'] / 60:.0f} min on {r['threads']} CPU threads |", "",
        "## Training data", "",
        "Python sources and docstrings of the standard library files outside the subset used by qbench's "
        "`builtin:text` and `builtin:code` suites, and of these packages: " + ", ".join(PACKAGES) + ", plus "
        "their metadata descriptions. Every source with its sha256 is listed in `training.json`. Validation "
        "loss uses 1% of those sources, held out by a hash of the source name.", "",
        "## Held-out perplexity", "",
        "On the evaluation pools of `builtin:text` and `builtin:code` (seed 0; their source files are "
        "disjoint from the training data and from the calibration pools):", "",
        "| workload | perplexity | tokens | samples | seq_len |", "|---|---|---|---|---|",
    ]
    for spec, h in r["heldout"].items():
        lines.append(f"| {spec} | {h['ppl']:.2f} | {h['tokens']:,} | {h['samples']} | {h['seq_len']} |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v), ""]
    return "\n".join(lines)
