"""A gate as the report reads it: plain data from the run's stored experiment, checked against the metric
registry.

The experiment file's `Gate` model (qbench.schema) validated every gate before the run started; the report
reads the resolved experiment back from meta.json, which may have been edited since, so it checks again here
with plain code (no pydantic model, no schema import) and turns a bad gate into a message instead of a crash.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from qbench.errors import ConfigError
from qbench.registry import did_you_mean
from qbench.results.metrics import GATE_USES, VARIANTS, Metric, gate_metric, gate_problem

# The fields of qbench.schema.experiment.Gate (a test keeps the two in step).
FIELDS = ("metric", "min", "max", "use", "model", "scheme", "workload", "batch_size", "variant", "name")
MAX_NAME = 80


class InvalidGate(ValueError):
    """A stored gate that cannot be checked; `field` is the one at fault (None: the gate as a whole)."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


@dataclass(frozen=True)
class GateSpec:
    metric: str
    spec: Metric
    min: Optional[float] = None
    max: Optional[float] = None
    use: str = "value"
    model: Optional[str] = None
    scheme: Optional[str] = None
    workload: Optional[str] = None
    batch_size: Optional[int] = None
    variant: Optional[str] = None
    name: Optional[str] = None

    @property
    def resolved_variant(self) -> str:
        """The variant whose rows are judged (the metric's first declared variant unless set)."""
        return self.variant or self.spec.variants[0]


def parse_gate(raw) -> GateSpec:
    """A GateSpec from a stored gate (a dict, or an object with model_dump); InvalidGate when it is not one."""
    if hasattr(raw, "model_dump"):
        raw = raw.model_dump(mode="json")
    if not isinstance(raw, dict):
        raise InvalidGate(f"a gate is a mapping of {', '.join(FIELDS)}, not {type(raw).__name__}")
    for key in raw:
        if key not in FIELDS:
            raise InvalidGate(f"unknown field{did_you_mean(str(key), FIELDS)}", str(key))
    if not isinstance(raw.get("metric"), str):
        raise InvalidGate("a metric name is required", "metric")
    try:
        spec = gate_metric(raw["metric"])
    except ConfigError as e:
        raise InvalidGate(str(e), "metric") from None
    values = {k: raw.get(k) for k in FIELDS if raw.get(k) is not None and k != "metric"}
    _check_types(values)
    values.update({k: float(values[k]) for k in ("min", "max") if k in values})
    gate = GateSpec(metric=raw["metric"], spec=spec, **values)
    if gate.min is None and gate.max is None:
        raise InvalidGate("a gate needs min, max or both")
    if gate.min is not None and gate.max is not None and gate.min > gate.max:
        raise InvalidGate(f"max ({gate.max:g}) is below min ({gate.min:g})")
    problem = gate_problem(spec, use=gate.use, batch_size=gate.batch_size, variant=gate.variant)
    if problem:
        raise InvalidGate(problem[1])
    return gate


def _check_types(values: dict) -> None:
    for key in ("min", "max"):
        x = values.get(key)
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)):
            raise InvalidGate(f"{x!r} is not a finite number", key)
    for key, allowed in (("use", GATE_USES), ("variant", VARIANTS)):
        if key in values and values[key] not in allowed:
            raise InvalidGate(f"{values[key]!r} is not one of {', '.join(allowed)}", key)
    for key in ("model", "scheme", "workload", "name"):
        if key in values and not isinstance(values[key], str):
            raise InvalidGate(f"{values[key]!r} is not text", key)
    if "name" in values and not 1 <= len(values["name"]) <= MAX_NAME:
        raise InvalidGate(f"a name has 1 to {MAX_NAME} characters", "name")
    bs = values.get("batch_size")
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
        raise InvalidGate(f"{bs!r} is not a batch size (an integer, 1 or more)", "batch_size")
