"""The metric registry: every number qbench records, declared once.

    spec = metric("kl_mean")            # a Metric; ConfigError with a did-you-mean hint when undeclared
    spec.unit, spec.direction, spec.variants, spec.has_ci, spec.per_batch, spec.task, spec.glossary

The runner (runner/measure.py, runner/gpu.py) takes names, units and variants from here and refuses to write
an undeclared row; the schema derives the metrics a gate may judge (schema.experiment.GATE_METRICS); the
report takes glossary text, display format, direction, card section and plot role from here. A new metric is
one entry below plus the code that measures it. How a value was computed for one run (timer, repeats,
interval method) stays with the producer, in each row's `method`, because it carries the run's settings.

Plain data: no torch, no pydantic, nothing above qbench.registry and qbench.errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Optional

from qbench.errors import ConfigError
from qbench.registry import Registry, did_you_mean

VARIANTS = ("baseline", "quantized", "paired")
TASKS = ("encoder", "causal_lm")
Direction = Literal["higher", "lower", "none"]
Display = Literal["fixed4", "ratio", "bytes", "sig"]
Section = Literal["speed", "quality", "memory", "conditions", "energy"]
GATE_USES = ("value", "ci_low", "ci_high")


@dataclass(frozen=True)
class Metric:
    """What qbench knows about one metric, whoever produces or reads it."""

    name: str
    unit: str                      # unit of value (and of ci_low / ci_high / p10 / p90)
    direction: Direction           # which way is better: higher, lower, or none (a condition, a spread)
    variants: tuple[str, ...]      # variants it is recorded under; the first is a gate's default
    glossary: str                  # what it means, for the card's glossary
    has_ci: bool = False           # rows carry ci_low / ci_high
    per_batch: bool = False        # one row per batch size (batch_size set); else batch_size is empty
    task: Optional[str] = None     # only measured for this task (encoder | causal_lm); None: both
    device: Optional[str] = None   # only recorded on this device type ("cuda"); None: every device
    display: Display = "sig"       # fixed4: 4 decimals; ratio: 2 decimals and "x"; bytes: MiB; sig: 3 digits
    section: Section = "quality"   # the card's table it belongs to
    gate: bool = True              # a gate may judge it
    label: str = ""                # short name in the card's prose ("cosine"); default: the name
    ideal: Optional[float] = None  # the value meaning "no change from the baseline"
    headline: bool = False         # the task's quality number in the summary, the overview and the pareto plot
    contrast: bool = False         # compared across workloads (text vs code) in the card
    plot: Optional[str] = None     # the card plot that draws it: speedup | pareto | weights

    @property
    def higher_is_better(self) -> Optional[bool]:
        return {"higher": True, "lower": False}.get(self.direction)

    @property
    def short(self) -> str:
        return self.label or self.name

    def degradation(self, value: float) -> float:
        """How far a value is from `ideal` in the bad direction (0 = no change, higher = worse)."""
        if self.ideal is None or self.direction == "none":
            raise ValueError(f"{self.name} has no ideal value and direction to measure a degradation from")
        return self.ideal - value if self.direction == "higher" else value - self.ideal

    @property
    def degradation_label(self) -> str:
        """How the card names the degradation: '1 − cosine' for higher-is-better, the label otherwise."""
        if self.direction == "higher":
            return f"{self.ideal:g} − {self.short}"
        return self.short


_B, _Q, _P = "baseline", "quantized", "paired"
_BQ = (_Q, _B)
_SPEED = {"per_batch": True, "has_ci": True, "section": "speed"}
_LM = {"task": "causal_lm"}

# Declaration order is the card's glossary order and the gate catalogue's order.
_DECLARED = (
    Metric("latency_ms", "ms", "lower", _BQ, "Wall-clock time of one forward pass over a batch (median of the "
           "timed repeats); for causal LMs the prefill up to the first output token (time to first token).",
           **_SPEED),
    Metric("throughput_tok_s", "tokens/s", "higher", _BQ,
           "Tokens processed per second: batch size x sequence length / latency.", **_SPEED),
    Metric("speedup", "x", "higher", (_P,), "Baseline latency / quantized latency; above 1 means the quantized "
           "model is faster.", display="ratio", ideal=1.0, plot="speedup", **_SPEED),
    Metric("weight_bytes", "bytes", "lower", _BQ, "Bytes of model weights held in memory.", display="bytes",
           section="memory", plot="weights"),
    Metric("bits_per_weight", "bits", "lower", _BQ, "Average bits per model parameter as held: 8 x weight bytes "
           "(codes, scales, zero points and every parameter left in float) / parameters.", section="memory"),
    Metric("peak_rss_bytes", "bytes", "lower", (_P,), "Peak resident memory of the process while the cell ran.",
           display="bytes", section="memory"),
    Metric("foreign_cpu_cores", "cores", "none", (_P,), "CPU cores busy with other processes while the cell was "
           "timed (0 = quiet machine).", section="conditions", gate=False),
    Metric("cosine_mean", "cosine", "higher", (_Q,), "Mean cosine similarity of quantized vs baseline embeddings "
           "(1 = identical).", has_ci=True, task="encoder", display="fixed4", label="cosine", ideal=1.0,
           headline=True, contrast=True, plot="pareto"),
    Metric("cosine_min", "cosine", "higher", (_Q,), "Lowest cosine similarity over the evaluation samples.",
           task="encoder", display="fixed4", ideal=1.0),
    Metric("nn_agreement", "share", "higher", (_Q,), "Share of samples whose nearest neighbour is the same for "
           "both models.", has_ci=True, task="encoder", display="fixed4", ideal=1.0),
    Metric("ppl", "ppl", "lower", _BQ, "Perplexity on the evaluation text.", **_LM),
    Metric("log_ppl_ratio", "nats", "lower", (_P,), "log(quantized perplexity / baseline perplexity); 0 means "
           "no change.", has_ci=True, label="log-PPL ratio", ideal=0.0, headline=True, contrast=True,
           plot="pareto", **_LM),
    Metric("kl_mean", "nats", "lower", (_Q,), "Mean per-token KL divergence of quantized from baseline "
           "next-token distributions.", has_ci=True, label="KL mean", ideal=0.0, contrast=True, **_LM),
    Metric("kl_p99", "nats", "lower", (_Q,), "99th percentile of the per-token KL divergence.", ideal=0.0, **_LM),
    Metric("top1_agreement", "share", "higher", (_Q,), "Share of tokens whose top-1 prediction matches the "
           "baseline.", has_ci=True, display="fixed4", ideal=1.0, **_LM),
    Metric("top1_agreement_se", "share", "none", (_Q,), "Standard error of top1_agreement over sequences.",
           gate=False, **_LM),
    Metric("kl_median", "nats", "lower", (_Q,), "Median of the per-token KL divergence.", ideal=0.0, **_LM),
    Metric("kl_p90", "nats", "lower", (_Q,), "90th percentile of the per-token KL divergence.", ideal=0.0, **_LM),
    Metric("kl_max", "nats", "lower", (_Q,), "Largest per-token KL divergence.", ideal=0.0, **_LM),
    Metric("p_top_change", "probability", "none", (_Q,), "Change in the probability of the baseline's most likely "
           "token (quantized minus baseline).", has_ci=True, ideal=0.0, **_LM),
    Metric("gen_prefix_match", "tokens", "higher", (_Q,), "Leading tokens of a greedy continuation identical to "
           "the baseline's continuation.", has_ci=True, **_LM),
    Metric("gen_exact_match", "share", "higher", (_Q,), "Share of prompts whose whole greedy continuation equals "
           "the baseline's.", has_ci=True, display="fixed4", ideal=1.0, **_LM),
    Metric("gen_parse_rate", "share", "higher", _BQ, "Share of prompt + continuations that are still valid "
           "Python (code workloads).", has_ci=True, display="fixed4", **_LM),
    Metric("decode_ms_per_token", "ms", "lower", _BQ, "Time per output token while decoding with the KV cache "
           "(causal LMs).", **_SPEED, **_LM),
    Metric("decode_tok_s", "tokens/s", "higher", _BQ, "Output tokens per second while decoding: batch size / "
           "time per output token.", **_SPEED, **_LM),
    Metric("decode_speedup", "x", "higher", (_P,), "Baseline / quantized time per output token; above 1 means "
           "faster decoding.", ideal=1.0, **_SPEED, **_LM),
    Metric("cuda_max_allocated_bytes", "bytes", "lower", (_P,), "Peak GPU memory held by tensors during the cell "
           "(torch.cuda.max_memory_allocated).", device="cuda", display="bytes", section="memory", gate=False),
    Metric("cuda_max_reserved_bytes", "bytes", "lower", (_P,), "Peak GPU memory reserved by torch's caching "
           "allocator during the cell.", device="cuda", display="bytes", section="memory", gate=False),
    Metric("energy_mj_per_token", "mJ/token", "lower", _BQ, "GPU energy per token from NVML's energy counter, in "
           "millijoules (idle power included).", per_batch=True, device="cuda", section="energy", gate=False),
    Metric("energy_ratio", "x", "higher", (_P,), "Baseline / quantized energy per token; above 1 means the "
           "quantized model uses less energy.", per_batch=True, device="cuda", ideal=1.0, section="energy",
           gate=False),
)

METRICS: Registry[Metric] = Registry("metric")
for _m in _DECLARED:
    METRICS.add(_m.name, _m)


def metric(name: str) -> Metric:
    """The declaration of a metric; ConfigError naming the known ones (with a did-you-mean hint) otherwise."""
    return METRICS.get(name)


def declared(name: object) -> bool:
    return name in METRICS


def all_metrics() -> Iterator[Metric]:
    """Every declared metric, in declaration order."""
    return (m for _, m in METRICS.items())


def gate_metrics() -> dict[str, Metric]:
    """The metrics a gate may judge, in declaration order."""
    return {m.name: m for m in all_metrics() if m.gate}


def gate_metric(name: str) -> Metric:
    """A metric a gate may judge; ConfigError for any other name (with a did-you-mean hint and the known ones)."""
    known = gate_metrics()
    if name in known:
        return known[name]
    if declared(name):
        raise ConfigError(f"{name} is not judged by gates; gates judge: {', '.join(known)}")
    raise ConfigError(f"unknown metric '{name}'{did_you_mean(name, list(known))}; known: {', '.join(known)}")


def gate_problem(spec: Metric, *, use: str = "value", batch_size: Optional[int] = None,
                 variant: Optional[str] = None) -> Optional[tuple[str, str]]:
    """(field, message) when a gate's settings cannot apply to this metric, else None."""
    if use != "value" and not spec.has_ci:
        return "use", f"{spec.name} has no confidence interval; use: value"
    if batch_size is not None and not spec.per_batch:
        per_batch = ", ".join(m.name for m in gate_metrics().values() if m.per_batch)
        return "batch_size", (f"{spec.name} is not measured per batch size; batch_size only applies to "
                              f"{per_batch}")
    if variant is not None and variant not in spec.variants:
        return "variant", f"{spec.name} is recorded for variant(s) {', '.join(spec.variants)}, not {variant}"
    return None


def row_problem(name: str, unit: Optional[str], variant: Optional[str], batch_size: Optional[int]) -> Optional[str]:
    """Why a row (metric, unit, variant, batch size) is not what its declaration says; None when it is."""
    if not declared(name):
        return f"undeclared metric '{name}'{did_you_mean(name, list(METRICS))}"
    spec = metric(name)
    if unit != spec.unit:
        return f"{name} is declared in {spec.unit!r}, not {unit!r}"
    if variant not in spec.variants:
        return f"{name} is declared for variant(s) {', '.join(spec.variants)}, not {variant}"
    if spec.per_batch != (batch_size is not None):
        return f"{name} is {'' if spec.per_batch else 'not '}recorded per batch size (batch_size {batch_size})"
    return None


def headline(task: Optional[str]) -> Optional[Metric]:
    """The task's quality number in the card's summary (cosine_mean, log_ppl_ratio), or None."""
    return next((m for m in all_metrics() if m.headline and m.task == task), None)


def contrasted(task: Optional[str]) -> tuple[Metric, ...]:
    """The metrics compared across workloads for a task, in declaration order."""
    return tuple(m for m in all_metrics() if m.contrast and m.task == task)


def plotted(plot: str) -> tuple[Metric, ...]:
    """The metrics one card plot draws (speedup, pareto, weights), in declaration order."""
    return tuple(m for m in all_metrics() if m.plot == plot)


def in_quality_table(name: str) -> bool:
    """A row without a batch size belongs to the card's quality table unless it is a size or a condition
    (undeclared metrics from other versions are shown there too)."""
    return not declared(name) or metric(name).section == "quality"
