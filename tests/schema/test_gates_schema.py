"""The `gates:` section of experiment files: located errors with did-you-mean hints; old files unchanged."""
from __future__ import annotations

import pytest
import yaml

from qbench.errors import ConfigError
from qbench.schema import parse_experiment
from qbench.schema.experiment import GATE_METRICS, Gate


def doc(gates=None, **extra) -> dict:
    d = {"schema_version": 1, "name": "g", "models": [{"id": "minilm"}],
         "schemes": [{"name": "w8a8-static", "weights": {"bits": 8}}, {"name": "w4", "weights": {"bits": 4}}],
         "workloads": [{"name": "text", "dataset": "builtin:text"}, {"name": "code", "dataset": "builtin:code"}],
         "measure": {"batch_sizes": [1, 8]}}
    if gates is not None:
        d["gates"] = gates
    d.update(extra)
    return d


def parse(d: dict):
    return parse_experiment(yaml.safe_dump(d, sort_keys=False), source="exp.yaml")


def error(gates, **extra) -> str:
    with pytest.raises(ConfigError) as info:
        parse(doc(gates, **extra))
    msg = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in msg
    return msg


def test_the_spec_example_validates():
    exp = parse(doc([
        {"metric": "kl_p99", "workload": "code", "max": 0.05},
        {"metric": "top1_agreement", "workload": "text", "min": 0.95},
        {"metric": "speedup", "min": 1.2, "batch_size": 8, "scheme": "w8a8-static"},
        {"metric": "cosine_mean", "min": 0.995, "use": "ci_low"},
    ]))
    assert [g.metric for g in exp.gates] == ["kl_p99", "top1_agreement", "speedup", "cosine_mean"]
    assert exp.gates[3].use == "ci_low" and exp.gates[0].use == "value"
    assert [g.resolved_variant for g in exp.gates] == ["quantized", "quantized", "paired", "quantized"]


def test_default_is_no_gates_and_the_dump_is_unchanged():
    exp = parse(doc())
    assert exp.gates == ()
    assert "gates" not in exp.model_dump(mode="json")  # meta.json of gate-less experiments as before


def test_gates_round_trip_compactly():
    exp = parse(doc([{"metric": "speedup", "min": 1.2, "scheme": "w4", "name": "fast"}]))
    dumped = exp.model_dump(mode="json")
    assert dumped["gates"] == [{"metric": "speedup", "min": 1.2, "use": "value", "scheme": "w4", "name": "fast"}]
    assert parse(dumped) == exp


def test_unknown_metric_with_hint():
    msg = error([{"metric": "kl_p9", "max": 0.05}])
    assert msg.startswith("exp.yaml: gates[0].metric: unknown metric 'kl_p9' (did you mean 'kl_p99'?)"), msg
    assert "top1_agreement" in msg  # the known metrics are listed


def test_unknown_scheme_filter_is_located():
    msg = error([{"metric": "cosine_mean", "min": 0.99}, {"metric": "speedup", "min": 1.2, "scheme": "w8a8-statc"}])
    assert "exp.yaml: gates[1].scheme: unknown scheme 'w8a8-statc' (did you mean 'w8a8-static'?)" in msg, msg
    msg = error([{"metric": "speedup", "min": 1.2, "scheme": "w8"}])
    assert "exp.yaml: gates[0].scheme: unknown scheme 'w8'" in msg and "w8a8-static, w4" in msg


def test_unknown_workload_and_model_filters_are_located():
    assert "gates[0].workload: unknown workload 'cod' (did you mean 'code'?)" in \
        error([{"metric": "cosine_mean", "min": 0.99, "workload": "cod"}])
    assert "gates[0].model: unknown model 'minlm' (did you mean 'minilm'?)" in \
        error([{"metric": "cosine_mean", "min": 0.99, "model": "minlm"}])
    named = doc([{"metric": "cosine_mean", "min": 0.99, "model": "minilm"},
                 {"metric": "cosine_mean", "min": 0.99, "model": "MiniLM"}])
    named["models"] = [{"id": "minilm", "name": "MiniLM"}]
    assert len(parse(named).gates) == 2  # a model filter may use the display name or the id


def test_neither_min_nor_max():
    msg = error([{"metric": "cosine_mean", "use": "ci_low"}])
    assert "exp.yaml: gates[0]: a gate needs min, max or both" in msg, msg


def test_bad_bounds_and_options_are_located():
    assert "gates[0].max: max (1) is below min (1.2)" in error([{"metric": "speedup", "min": 1.2, "max": 1}])
    assert "gates[0].max:" in error([{"metric": "speedup", "max": float("inf")}])
    assert "gates[0].use: cosine_min has no confidence interval" in \
        error([{"metric": "cosine_min", "min": 0.9, "use": "ci_low"}])
    assert "gates[0].use:" in error([{"metric": "cosine_mean", "min": 0.9, "use": "lower"}])
    assert "gates[0].batch_size: cosine_mean is not measured per batch size" in \
        error([{"metric": "cosine_mean", "min": 0.9, "batch_size": 8}])
    assert "gates[0].batch_size: batch size 4 is not measured" in \
        error([{"metric": "speedup", "min": 1.2, "batch_size": 4}])
    assert "gates[0].variant: speedup is recorded for variant(s) paired, not quantized" in \
        error([{"metric": "speedup", "min": 1.2, "variant": "quantized"}])
    assert "gates[0].mn: unknown field (did you mean 'min'?)" in error([{"metric": "speedup", "mn": 1.2}])


def test_metric_of_the_wrong_task_is_refused_when_the_task_is_known():
    msg = error([{"metric": "kl_p99", "max": 0.05}], models=[{"id": "minilm", "task": "encoder"}])
    assert "gates[0].metric: kl_p99 is only measured for causal_lm models (minilm is encoder)" in msg
    parse(doc([{"metric": "kl_p99", "max": 0.05}]))  # task auto: decided when the model loads


def test_every_runner_metric_is_gateable():
    for metric, info in GATE_METRICS.items():
        g = Gate(metric=metric, max=1.0)
        assert g.resolved_variant in info.variants
    assert set(GATE_METRICS) == {"latency_ms", "throughput_tok_s", "speedup", "weight_bytes", "bits_per_weight", "peak_rss_bytes",
                                 "cosine_mean", "cosine_min", "nn_agreement", "ppl", "log_ppl_ratio", "kl_mean",
                                 "kl_p99", "top1_agreement", "kl_median", "kl_p90", "kl_max", "p_top_change",
                                 "gen_prefix_match", "gen_exact_match", "gen_parse_rate", "decode_ms_per_token",
                                 "decode_tok_s", "decode_speedup"}


def test_gate_is_frozen_and_strict():
    g = Gate(metric="speedup", min=1.0)
    with pytest.raises(Exception):
        g.min = 2.0  # type: ignore[misc]
    with pytest.raises(Exception):
        Gate(metric="speedup", min=1.0, extra=1)
    assert all(info.description for info in Gate.model_fields.values())
