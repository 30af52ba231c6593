"""Offline calibration/evaluation corpora (qbench.datasets.suites) and the reference LM's training corpus,
disjoint from them (qbench.datasets.corpus)."""
from qbench.datasets.corpus import Doc, heldout_sources, training_corpus
from qbench.datasets.suites import BUILTIN_SUITES, Sample, Suite, load_suite, pools

__all__ = ["BUILTIN_SUITES", "Doc", "Sample", "Suite", "heldout_sources", "load_suite", "pools", "training_corpus"]
