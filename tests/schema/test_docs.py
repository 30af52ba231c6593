"""The README's experiment reference is generated from the schema and must match it."""
from pathlib import Path

from qbench.schema.docs import END, START, reference_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_matches_schema():
    text = README.read_text(encoding="utf-8")
    inside = text.split(START, 1)[1].split(END, 1)[0]
    assert inside.strip() == reference_table().strip(), "run: python -m qbench.schema.docs --write"


def test_reference_lists_every_field():
    table = reference_table()
    for field in ("group_size", "granularity", "dynamic", "exclude", "calibration", "batch_sizes", "seq_len"):
        assert f"`{field}`" in table
