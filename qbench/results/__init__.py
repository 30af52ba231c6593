"""Results: one long-form table plus meta. Never imports torch."""
from qbench.results.table import COLUMNS, ResultsTable, load_results, write_json_atomic

__all__ = ["COLUMNS", "ResultsTable", "load_results", "write_json_atomic"]
