"""Experiment files: pydantic models, YAML loading and JSON Schema export. Never imports torch."""
from qbench.schema.experiment import (
    ActivationQuant,
    Baseline,
    Calibration,
    Experiment,
    Gate,
    Measure,
    Mixed,
    ModelRef,
    Override,
    Runtime,
    QuantMethod,
    Scheme,
    WeightQuant,
    Workload,
)
from qbench.schema.loader import json_schema, load_experiment, parse_experiment

__all__ = [
    "ActivationQuant", "Baseline", "Calibration", "Experiment", "Gate", "Measure", "Mixed", "ModelRef", "Override", "QuantMethod",
    "Runtime", "Scheme",
    "WeightQuant", "Workload", "json_schema", "load_experiment", "parse_experiment",
]
