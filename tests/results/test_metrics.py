"""The metric registry: every metric the runner produces is declared once, and the schema's gates, the
runner's rows and the report read the declarations."""
from __future__ import annotations

import numpy as np
import pytest

from qbench.errors import ConfigError
from qbench.results import metrics as M


# ------------------------------------------------------------------------------------------ the producers

class _Tokenizer:
    def batch_decode(self, ids, skip_special_tokens=True):
        return ["def f(x):\n    return x\n" if i % 2 else "def f(:\n" for i in range(len(ids))]


def _cpu_rows(monkeypatch) -> list[dict]:
    """Rows of every CPU producer in runner/measure.py and runner/gpu.py's energy rows, on synthetic inputs."""
    import torch

    from qbench.runner import gpu, measure

    torch.manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    rows = measure.encoder_quality(base, base + 0.01 * torch.randn(6, 8))
    valid = torch.ones(4, 5, dtype=torch.bool)
    stats = {"valid": valid, "nll_base": torch.rand(4, 5), "nll_quant": torch.rand(4, 5), "kl": torch.rand(4, 5),
             "top1": (torch.rand(4, 5) > 0.3).double(), "dp_top": torch.randn(4, 5) * 0.01}
    rows += measure.lm_rows(stats, k=3, vocab=10)
    gen = torch.randint(0, 10, (4, 6))
    rows += measure.generation_rows(gen, gen.flip(1), torch.randint(0, 10, (4, 3)), _Tokenizer(), python=True)
    samples = lambda n, ms: [ms * (1 + 0.01 * i) for i in range(n)]  # noqa: E731
    monkeypatch.setattr(measure, "time_interleaved", lambda fa, fb, *, warmup, repeats, device, stop=None: (
        samples(repeats, 10), samples(repeats, 6)))
    monkeypatch.setattr(measure, "time_prefill_decode", lambda b, q, ids, d, *, warmup, repeats, device,
                        stop=None: {
        "prefill_base": samples(repeats, 10), "prefill_quant": samples(repeats, 6),
        "decode_base": samples(repeats, 2), "decode_quant": samples(repeats, 1)})
    batch = {"input_ids": torch.zeros(4, 5, dtype=torch.long), "attention_mask": torch.ones(4, 5)}
    rows += measure.speed_rows(None, None, "encoder", batch, 2, 5, 1, 4, "cpu")
    rows += measure.lm_speed_rows(None, None, batch, 2, 5, 3, 1, 4, "cpu")
    rows += gpu.energy_rows({"a_mj": 30.0, "b_mj": 20.0, "a_calls": 5, "b_calls": 6}, 10, "one forward pass", 2)
    return rows


# rows written outside runner/measure.py: cell.py's size and speed stages (checked end to end by
# tests/results/test_fixture.py) and GpuCell.end (CUDA only)
ELSEWHERE = {"weight_bytes", "bits_per_weight", "peak_rss_bytes", "foreign_cpu_cores", "cuda_max_allocated_bytes",
             "cuda_max_reserved_bytes"}


def test_every_metric_the_producers_write_is_declared_and_every_declared_one_is_written(monkeypatch):
    rows = _cpu_rows(monkeypatch)
    for r in rows:  # row() refuses undeclared metrics; this re-checks what it let through
        assert M.row_problem(r["metric"], r["unit"], r["variant"], r["batch_size"]) is None, r
    assert {r["metric"] for r in rows} | ELSEWHERE == set(M.METRICS)


@pytest.mark.parametrize("args, problem", [
    (("latency_msec", 1.0, "ms", "x", "baseline", 1), "undeclared metric 'latency_msec' (did you mean 'latency_ms'?)"),
    (("latency_ms", 1.0, "s", "x", "baseline", 1), "latency_ms is declared in 'ms', not 's'"),
    (("speedup", 1.0, "x", "x", "quantized", 1), "speedup is declared for variant(s) paired, not quantized"),
    (("cosine_mean", 1.0, "cosine", "x", "quantized", 8), "cosine_mean is not recorded per batch size"),
    (("latency_ms", 1.0, "ms", "x", "baseline", None), "latency_ms is recorded per batch size"),
])
def test_the_runner_refuses_rows_the_registry_does_not_declare(args, problem):
    from qbench.runner.measure import measured, row

    with pytest.raises(ValueError) as e:
        row(*args)
    assert str(e.value).startswith(problem) and "qbench/results/metrics.py" in str(e.value)
    assert measured("latency_ms", 2.0, "timed", "baseline", 1)["unit"] == "ms"


# ------------------------------------------------------------------------------------------ declarations

def test_declarations_are_consistent():
    for m in M.all_metrics():
        assert m.variants and set(m.variants) <= set(M.VARIANTS), m.name
        assert m.task in (None, *M.TASKS) and m.direction in ("higher", "lower", "none"), m.name
        assert m.glossary.endswith(".") and m.unit, m.name
        if m.headline or m.contrast:  # a degradation needs a "no change" value and a direction
            assert m.ideal is not None and m.direction != "none" and m.task is not None, m.name
        if m.device == "cuda":  # GPU-only metrics cannot be gated: a CPU run would always be "no data"
            assert not m.gate, m.name
    assert [m.name for m in (M.headline("encoder"), M.headline("causal_lm"))] == ["cosine_mean", "log_ppl_ratio"]
    assert M.headline(None) is None and M.contrasted(None) == ()


def test_degradation_follows_direction_and_ideal():
    cos, kl = M.metric("cosine_mean"), M.metric("kl_mean")
    assert cos.degradation(0.99) == pytest.approx(0.01) and cos.degradation_label == "1 − cosine"
    assert kl.degradation(0.2) == pytest.approx(0.2) and kl.degradation_label == "KL mean"
    with pytest.raises(ValueError):
        M.metric("foreign_cpu_cores").degradation(1.0)


def test_an_undeclared_metric_is_a_config_error_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown metric 'cosin_mean' \(did you mean 'cosine_mean'\?\)"):
        M.metric("cosin_mean")
    with pytest.raises(ConfigError, match=r"unknown metric 'kl_p9' \(did you mean 'kl_p99'\?\); known: latency_ms"):
        M.gate_metric("kl_p9")
    with pytest.raises(ConfigError, match="energy_ratio is not judged by gates"):
        M.gate_metric("energy_ratio")


def test_a_gate_on_an_undeclared_metric_fails_the_experiment_with_exit_2():
    from qbench.schema import parse_experiment

    text = ("schema_version: 1\nname: t\nmodels: [{id: minilm}]\nschemes: [{name: w8, weights: {bits: 8}}]\n"
            "workloads: [{name: text, dataset: 'builtin:text'}]\ngates: [{metric: top1_agrement, min: 0.9}]\n")
    with pytest.raises(ConfigError) as e:
        parse_experiment(text, source="exp.yaml")
    assert e.value.exit_code == 2
    assert "gates[0].metric: unknown metric 'top1_agrement' (did you mean 'top1_agreement'?)" in str(e.value)


def test_schema_gate_catalogue_is_derived_from_the_registry():
    from qbench.schema.experiment import GATE_METRICS

    assert list(GATE_METRICS) == [m.name for m in M.all_metrics() if m.gate]
    for name, info in GATE_METRICS.items():
        m = M.metric(name)
        assert (info.variants, info.has_ci, info.speed, info.task) == (m.variants, m.has_ci, m.per_batch, m.task)


def test_the_card_formats_each_metric_by_its_declaration():
    from qbench.report.fmt import fmt

    x = 1234567.891
    expected = {"fixed4": "1234567.8910", "ratio": "1234567.89x", "bytes": "1.18 MiB", "sig": "1,234,568"}
    for m in M.all_metrics():
        assert fmt(x, m.name) == expected[m.display], m.name
    assert fmt(x, "not_declared") == expected["sig"]
    assert fmt(np.float64("nan"), "speedup") == "—"
