"""Finding rows and ordering names: what every part of the report needs from a ResultsTable."""
from __future__ import annotations

from qbench.report.fmt import num


def ordered(declared, seen) -> list:
    """Names in the experiment's order, then names only the results show, each once (None dropped)."""
    out = [x for x in declared if x is not None]
    return out + [x for x in dict.fromkeys(seen) if x is not None and x not in out]


def card_order(experiment: dict, cells: list) -> dict:
    """{"models", "schemes", "workloads"}: the experiment's order first, then what only the cells name."""
    return {
        "models": ordered([m.get("name") or m.get("id") for m in experiment.get("models", [])],
                          [c.get("model") for c in cells]),
        "schemes": ordered([s.get("name") for s in experiment.get("schemes", [])], [c.get("scheme") for c in cells]),
        "workloads": ordered([w.get("name") for w in experiment.get("workloads", [])],
                             [c.get("workload") for c in cells]),
    }


def model_task(cells: list, model) -> str | None:
    """The task (encoder | causal_lm) a model's cells ran, None when none recorded one."""
    return next((c.get("task") for c in cells if c.get("model") == model and c.get("task")), None)


class Index:
    """Row lookup by (model, scheme, workload, metric, variant, batch_size); variant None = any."""

    def __init__(self, rows):
        self.rows = rows
        self._by: dict = {}
        for r in rows:
            k = (r["model"], r["scheme"], r["workload"], r["metric"])
            self._by.setdefault(k + (r["variant"], r["batch_size"]), r)
            self._by.setdefault(k + (None, r["batch_size"]), r)

    def get(self, model, scheme, workload, metric, variant=None, bs=None):
        return self._by.get((model, scheme, workload, metric, variant, bs))

    def batch_sizes(self, model, scheme, workload):
        return sorted({r["batch_size"] for r in self.rows if r["batch_size"] is not None
                       and (r["model"], r["scheme"], r["workload"]) == (model, scheme, workload)})

    def speed_workload(self, model, scheme, workloads):
        """The first workload (in experiment order) with speed rows for model x scheme."""
        return next((w for w in workloads if self.batch_sizes(model, scheme, w)), None)

    def weights_ratio(self, model, scheme, workloads) -> float | None:
        """Baseline / quantized weight bytes of model x scheme (from the first workload that has both)."""
        for w in workloads:
            wb, wq = (self.get(model, scheme, w, "weight_bytes", v) for v in ("baseline", "quantized"))
            if wb and wq and num(wb["value"]) and num(wq["value"]):
                return num(wb["value"]) / num(wq["value"])
        return None
