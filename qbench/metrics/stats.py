"""The statistics qbench summarizes measurements with now live in qbench.results.stats (pure numpy: the report
reads them too, and the report never imports qbench.metrics). This name stays: it is the same module."""
import sys

from qbench.results import stats as _stats

sys.modules[__name__] = _stats
