"""Results: the records a run writes (typed), the metric registry, and one long-form table plus meta.

Never imports torch; the schema, the runner and the report may all import it.
"""
from qbench.results.records import CellRecord, QuantEntry, Row, RunMeta
from qbench.results.table import COLUMNS, MalformedRun, ResultsTable, load_results, write_json_atomic

__all__ = ["COLUMNS", "CellRecord", "MalformedRun", "QuantEntry", "ResultsTable", "Row", "RunMeta", "load_results",
           "write_json_atomic"]
