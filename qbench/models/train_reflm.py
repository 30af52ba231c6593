"""Moved: the reference LM's training script is now qbench.tools.train_reflm, its corpus qbench.datasets.corpus.

Training needs the datasets' corpora and models may not import datasets, so the script became a tool beside
qbench.bench. This shim keeps the old command and the script's names working:

    python -m qbench.models.train_reflm --out DIR    (the same as python -m qbench.tools.train_reflm --out DIR)

The corpus helpers that lived here (corpus, heldout_sources, PACKAGES) are qbench.datasets.training_corpus,
qbench.datasets.heldout_sources and qbench.datasets.corpus.PACKAGES.
"""
from __future__ import annotations

import sys

# The one import from models up to a tool, kept for compatibility (the import contract names this edge).
from qbench.tools.train_reflm import (  # noqa: F401  (re-exported)
    CHECKPOINT_EVERY,
    EOS,
    Config,
    Doc,
    build_model,
    encode,
    heldout_ppl,
    lr_at,
    main,
    train,
    train_tokenizer,
)

if __name__ == "__main__":
    sys.exit(main())
