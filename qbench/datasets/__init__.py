"""Offline calibration/evaluation corpora (see qbench.datasets.suites)."""
from qbench.datasets.suites import BUILTIN_SUITES, Sample, Suite, load_suite, pools

__all__ = ["BUILTIN_SUITES", "Sample", "Suite", "load_suite", "pools"]
