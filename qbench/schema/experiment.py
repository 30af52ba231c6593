"""Schema v1 of experiment files. One frozen model per concept; unknown keys are errors."""
from __future__ import annotations

import re
from typing import Literal, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from qbench.errors import ConfigError
from qbench.registry import did_you_mean
from qbench.results.metrics import gate_metric, gate_metrics, gate_problem

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
OpKind = Literal["linear", "embedding", "lm_head", "attention", "residual"]  # the op kinds a scheme can quantize


class FieldError(ValueError):
    """A cross-field check that blames one field: the loader appends `loc` to the error's location."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = tuple(loc)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


WEIGHT_FORMATS = ("int", "nf4", "fp8_e4m3", "fp4_e2m1")
FORMAT_BITS = {"nf4": 4, "fp8_e4m3": 8, "fp4_e2m1": 4}  # the bits of each value-table format


class WeightQuant(_Strict):
    """How weights are quantized (once, ahead of time)."""

    format: Literal["int", "nf4", "fp8_e4m3", "fp4_e2m1"] = Field(
        "int", description="int: affine integers of `bits` bits; nf4 (NormalFloat 4-bit), fp8_e4m3 or fp4_e2m1: "
        "the nearest value of the format's table, scaled per tensor/channel/group so the block's absmax maps to "
        "the format's largest value (bits, signed and symmetric do not apply). Non-int formats run on the "
        "emulated reference kernel (dequantize, then a float matmul) and the card says so."
    )
    bits: Optional[int] = Field(
        None, ge=2, le=8, description="Integer bit width of the stored weights (2 to 8); required for format int."
    )
    signed: bool = Field(True, description="Signed integers (e.g. int8 -128..127) or unsigned (0..255).")
    symmetric: bool = Field(
        True, description="Symmetric: zero-point fixed (0 signed, mid-range unsigned); asymmetric: "
        "zero-point fitted to the min/max so the full range is used."
    )
    granularity: Literal["per_tensor", "per_channel", "per_group"] = Field(
        "per_channel", description="One scale per tensor, per output channel (row), or per group of "
        "`group_size` consecutive input columns within a row."
    )
    group_size: Optional[int] = Field(
        None, ge=2, le=65536, description="Columns per group; required for per_group, forbidden otherwise."
    )

    @model_validator(mode="after")
    def _group(self):
        if self.granularity == "per_group" and self.group_size is None:
            raise FieldError(("group_size",), "group_size is required when granularity is per_group")
        if self.granularity != "per_group" and self.group_size is not None:
            raise FieldError(("group_size",),
                             f"group_size only applies to per_group (granularity is {self.granularity})")
        if self.format == "int" and self.bits is None:
            raise FieldError(("bits",), "bits is required for integer weights (format: int)")
        if self.format != "int":
            fixed = [f for f in ("bits", "signed", "symmetric") if f in self.model_fields_set]
            if fixed:
                raise FieldError((fixed[0],), f"{fixed[0]} does not apply to format {self.format} (a value table "
                                 f"of {FORMAT_BITS[self.format]} bits); remove it")
        return self

    @property
    def resolved_bits(self) -> int:
        """Bits per stored code: `bits` for int, the format's own otherwise."""
        return self.bits if self.format == "int" else FORMAT_BITS[self.format]

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # integer weights dump exactly as before formats existed (meta.json, --resume checks)
        data = handler(self)
        if self.format == "int":
            data.pop("format", None)
        else:
            for key in ("bits", "signed", "symmetric"):
                data.pop(key, None)
        return data


class ActivationQuant(_Strict):
    """How the inputs of quantized ops are quantized at run time."""

    bits: int = Field(8, ge=2, le=8, description="Integer bit width of activations (2 to 8).")
    signed: bool = Field(False, description="Signed or unsigned activation integers.")
    symmetric: bool = Field(False, description="Symmetric (zero-point fixed) or asymmetric activations.")
    granularity: Literal["per_tensor", "per_token"] = Field(
        "per_tensor", description="One scale for the whole input, or one per token (row); per_token "
        "needs dynamic: true."
    )
    dynamic: bool = Field(
        True, description="Compute activation ranges from each input at run time (true) or fix them "
        "from calibration data (false; needs `calibration`)."
    )

    @model_validator(mode="after")
    def _per_token_dynamic(self):
        if self.granularity == "per_token" and not self.dynamic:
            raise FieldError(("dynamic",), "per_token activation scales need dynamic: true")
        return self


class Calibration(_Strict):
    """Data used to fix static activation ranges."""

    dataset: str = Field(
        "text", description="A workload name of this experiment, `builtin:text`, `builtin:code`, or a "
        ".txt/.jsonl path. Calibration samples are drawn from a pool disjoint from evaluation samples."
    )
    size: int = Field(32, ge=1, le=4096, description="Number of calibration samples.")
    method: Literal["minmax", "percentile", "mse"] = Field(
        "minmax", description="Observer turning statistics into ranges: running min/max, a percentile "
        "of |x|, or the clipping range minimizing quantization MSE."
    )
    percentile: float = Field(99.99, gt=50, le=100, description="Percentile used by method: percentile.")
    seq_len: Optional[int] = Field(
        None, ge=8, le=8192, description="Tokens per calibration sample (default: measure.seq_len)."
    )

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        data = handler(self)
        if self.seq_len is None:
            data.pop("seq_len", None)
        return data


# Each method's parameters and their defaults (a parameter set to None in a file means its default).
METHOD_PARAMS: dict[str, dict[str, object]] = {
    "rtn": {},
    "smoothquant": {"alpha": 0.5},
    "gptq": {"damp": 0.01, "block_size": 128, "act_order": False, "static_groups": False, "sequential": True},
    "awq": {"grid": 20, "clip": False},
    "qat": {"steps": 200, "lr": 2.0e-5, "batch_size": 4, "learn_scales": True, "distill": True,
            "checkpoint_every": 50},
}
CALIBRATED_METHODS = ("smoothquant", "gptq", "awq", "qat")


class QuantMethod(_Strict):
    """How the weight codes are chosen: round to nearest, or a calibrated method."""

    name: str = Field(
        "rtn", description="rtn (round to nearest), smoothquant (activation outliers moved into the weights, "
        "then rtn), gptq (columns rounded one by one, errors spread by the inverse Hessian of calibration "
        "inputs), awq (activation-aware column scaling, optional clipping), qat (a short quantization-aware "
        "training run from round to nearest, distilled from the unquantized model on the calibration pool). "
        "smoothquant, gptq, awq and qat need a `calibration` section."
    )
    alpha: Optional[float] = Field(None, ge=0, le=1, description="smoothquant: migration strength in [0, 1] "
                                   "(default 0.5).")
    damp: Optional[float] = Field(None, gt=0, le=10, description="gptq: damping added to the Hessian's diagonal, "
                                  "as a fraction of its mean (default 0.01).")
    block_size: Optional[int] = Field(None, ge=1, le=65536, description="gptq: columns per lazy update block "
                                      "(default 128).")
    act_order: Optional[bool] = Field(None, description="gptq: round columns by descending Hessian diagonal "
                                      "(default false).")
    static_groups: Optional[bool] = Field(None, description="gptq: group qparams from the original weights "
                                          "rather than the updated ones (default false).")
    sequential: Optional[bool] = Field(None, description="gptq: each block's statistics from the outputs of the "
                                       "already-quantized blocks (default true); false: all from the float model.")
    grid: Optional[int] = Field(None, ge=1, le=1000, description="awq: scaling exponents searched, 0 to "
                                "(grid-1)/grid (default 20; 1 is round to nearest).")
    clip: Optional[bool] = Field(None, description="awq: search a clipping range per output row and block "
                                 "(default false).")
    steps: Optional[int] = Field(None, ge=1, le=1_000_000, description="qat: optimizer steps (default 200).")
    lr: Optional[float] = Field(None, gt=0, le=1, description="qat: peak learning rate of Adam (default 2e-5; "
                                "10% linear warm-up, then cosine decay to a tenth).")
    batch_size: Optional[int] = Field(None, ge=1, le=4096, description="qat: calibration sequences per step "
                                      "(default 4).")
    learn_scales: Optional[bool] = Field(None, description="qat: train the weight scales too, LSQ style "
                                         "(default true).")
    distill: Optional[bool] = Field(None, description="qat: loss against the unquantized model's outputs "
                                    "(default true); false: next-token cross entropy (causal LMs only).")
    checkpoint_every: Optional[int] = Field(None, ge=0, le=1_000_000, description="qat: steps between "
                                            "checkpoints an interrupted run resumes from (default 50; 0: none).")

    @model_validator(mode="after")
    def _known(self):
        if self.name not in METHOD_PARAMS:
            raise FieldError(("name",), f"unknown method '{self.name}'{did_you_mean(self.name, list(METHOD_PARAMS))}"
                             f"; choose from {', '.join(METHOD_PARAMS)}")
        allowed = METHOD_PARAMS[self.name]
        for key in self.model_fields_set - {"name"}:
            if getattr(self, key) is not None and key not in allowed:
                owners = [m for m, ps in METHOD_PARAMS.items() if key in ps]
                raise FieldError((key,), f"{key} is a parameter of {', '.join(owners)}, not of {self.name}"
                                 + (f" (its parameters: {', '.join(allowed)})" if allowed else ""))
        return self

    @property
    def params(self) -> dict[str, object]:
        """Every parameter of the method, defaults filled in."""
        return {k: (d if getattr(self, k) is None else getattr(self, k)) for k, d in METHOD_PARAMS[self.name].items()}

    @property
    def needs_calibration(self) -> bool:
        return self.name in CALIBRATED_METHODS

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class Override(_Strict):
    """A per-module exception to its scheme: other weights, activations or method, or left in float."""

    match: str = Field(min_length=1, description="Module-name glob (fnmatch, case-sensitive), e.g. "
                       "'model.layers.0.*' or '*.mlp.down_proj'; the first override that matches a module wins.")
    weights: Optional[WeightQuant] = Field(None, description="Weights for the matched modules (default: the "
                                           "scheme's).")
    activations: Optional[ActivationQuant] = Field(None, description="Activations for the matched modules "
                                                   "(default: the scheme's); null: weight-only there.")
    method: Optional[QuantMethod] = Field(None, description="Method for the matched modules (default: the "
                                          "scheme's); qat trains a whole scheme and cannot be an override.")
    skip: bool = Field(False, description="Leave the matched modules at baseline precision.")

    @model_validator(mode="after")
    def _meaningful(self):
        given = [k for k in ("weights", "activations", "method") if k in self.model_fields_set]
        if self.skip and given:
            raise FieldError((given[0],), "skip: true leaves the modules in float; remove " + ", ".join(given))
        if not self.skip and not given:
            raise FieldError(("match",), "an override changes weights, activations or method, or sets skip: true")
        if self.method is not None and self.method.name == "qat":
            raise FieldError(("method", "name"), "qat trains a whole scheme; give it to the scheme, not an override")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if k == "match" or k in self.model_fields_set}


class Mixed(_Strict):
    """A per-unit mixed-precision plan under a bits budget, from a sensitivity measurement of the model."""

    budget_bits: Union[float, tuple[float, ...]] = Field(
        description="Average bits per weight over the planned units (codes, scales and zero points), e.g. 5.0; a "
        "list makes one scheme per budget, named <scheme>-<budget>b, so one run draws the frontier.")
    choices: tuple[str, ...] = Field(
        min_length=2, description="Formats a unit may get: names of other (plain) schemes of this experiment, "
        "whose weights and activations are used, and `skip` (left in float, counted at 32 bits).")
    score: Literal["kl", "sqnr"] = Field(
        "kl", description="What the plan minimizes, summed over units: kl (each unit's end-to-end KL for causal "
        "LMs, 1 - cosine for encoders, when quantized alone) or sqnr (the unit's output noise power, 10^(-SQNR/10)).")
    strategy: Literal["optimal", "random"] = Field(
        "optimal", description="optimal: an exact dynamic program over the units' costs; random: units upgraded "
        "in a seeded random order until the budget is spent (a control with about the same bits).")
    seed: int = Field(0, ge=0, description="random: the seed of the order.")
    samples: int = Field(8, ge=1, le=512, description="Calibration samples of the sensitivity measurement.")
    seq_len: int = Field(64, ge=8, le=8192, description="Tokens per calibration sample of the sensitivity "
                         "measurement.")

    @field_validator("budget_bits")
    @classmethod
    def _budgets(cls, v):
        for b in (v if isinstance(v, tuple) else (v,)):
            if not 1 <= b <= 32:
                raise ValueError(f"budget {b:g} bits per weight is outside [1, 32]")
        return v


# llama.cpp file types a runtime scheme may ask for (qbench.runtimes.llamacpp maps each to llama.cpp's constant)
LLAMACPP_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S",
                  "Q4_0", "Q4_1", "IQ4_NL", "Q3_K_M", "Q3_K_S", "Q3_K_L", "Q2_K")


class Runtime(_Strict):
    """A peer runtime that quantizes and runs the whole model itself, measured in the same cells."""

    name: Literal["llama.cpp"] = Field(
        description="llama.cpp (the `[llamacpp]` extra): the model's float GGUF (the baseline's own weights) "
        "requantized by llama.cpp's quantizer and run by llama.cpp on the run's threads. GGUF models only."
    )
    type: str = Field(
        description="llama.cpp's file type, as `llama-quantize` names it: " + ", ".join(LLAMACPP_TYPES) + ". "
        "llama.cpp picks each tensor's type by its own rules (the card lists what it chose)."
    )
    kv_cache: Literal["f16", "f32"] = Field(
        "f16", description="f16: llama.cpp's defaults (F16 KV cache, flash attention where it chooses to); f32: "
        "F32 KV cache and no flash attention, so nothing in the runtime rounds below float32 but the weights."
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in LLAMACPP_TYPES:
            raise ValueError(f"unknown llama.cpp type '{v}'{did_you_mean(v, LLAMACPP_TYPES)}; known: "
                             + ", ".join(LLAMACPP_TYPES))
        return v


# Scheme fields that describe qbench's own quantization and mean nothing to a peer runtime
_ENGINE_ONLY = ("activations", "ops", "exclude", "calibration", "kernel", "method", "overrides")


class Scheme(_Strict):
    """One quantization recipe compared against the baseline."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique name shown in the card.")
    weights: Optional[WeightQuant] = Field(
        None, description="Weight quantization (required unless the scheme names a `runtime`)."
    )
    runtime: Optional[Runtime] = Field(
        None, description="Run the scheme in a peer runtime instead of qbench's engine (e.g. "
        "`{name: llama.cpp, type: Q4_0}`); the runtime then decides weights and activations, and `weights`, "
        "`activations`, `ops`, `exclude`, `calibration` and `kernel` must be left out."
    )
    activations: Optional[ActivationQuant] = Field(
        None, description="Activation quantization; omit for weight-only schemes."
    )
    ops: tuple[OpKind, ...] = Field(
        ("linear",), min_length=1, description="Op kinds to quantize: linear (nn.Linear and transformers "
        "Conv1D), lm_head (the output projection of causal LMs), embedding (weight-only), attention (the inputs "
        "of Q K^T and P V, with the scheme's activation bits and granularity, dynamic; an integer kernel on the "
        "CPU), residual (quantize-dequantize of both inputs of each residual add; emulated)."
    )
    exclude: tuple[str, ...] = Field(
        (), description="Module-name globs kept at baseline precision (mixed precision), e.g. '*.pooler.*'."
    )
    method: QuantMethod = Field(
        default_factory=QuantMethod, description="How the weight codes are chosen (default: {name: rtn})."
    )
    calibration: Optional[Calibration] = Field(
        None, description="Calibration data; required when activations are static and for the methods "
        "smoothquant, gptq, awq and qat (which use it even when activations are dynamic or absent; qat trains on it)."
    )
    kernel: str = Field(
        "auto", description="Kernel name to force (see `qbench list kernels`), or auto: the fastest "
        "kernel that supports the configuration on the device. A forced kernel that cannot run raises."
    )
    overrides: tuple[Override, ...] = Field(
        (), description="Per-module exceptions, first match wins: `{match: <glob>, weights: {...}, activations: "
        "{...} | null, method: {...}}` or `{match: <glob>, skip: true}` (mixed precision). The quantization map "
        "shows what each module got."
    )
    mixed: Optional[Mixed] = Field(
        None, description="Plan this scheme per unit from a sensitivity measurement: `{budget_bits: 5.0, choices: "
        "[w4, w8, skip]}` assigns each unit (a linear, or the linears sharing an input) one of the choices to "
        "minimize the summed sensitivity under the budget (see Mixed); its own weights and activations apply only to "
        "quantized modules outside the units (lm_head or embeddings, when its ops include them)."
    )
    if_fails: Optional[str] = Field(
        None, description="Run this scheme on a model only when the named scheme fails one of the experiment's "
        "gates there (e.g. a QAT twin that trains only when its PTQ scheme misses); otherwise its cells are "
        "skipped, saying so. Its cells run after all the others."
    )

    @model_validator(mode="after")
    def _weights_or_runtime(self):
        if self.runtime is None and self.weights is None:
            raise FieldError(("weights",), "weights is required (or a runtime section)")
        if self.runtime is not None:
            if self.weights is not None:
                raise FieldError(("weights",), f"a {self.runtime.name} scheme takes its weights from "
                                 f"runtime.type ({self.runtime.type}); leave weights out")
            for key in _ENGINE_ONLY:
                if key in self.model_fields_set:
                    raise FieldError((key,), f"{key} does not apply to a {self.runtime.name} scheme (the runtime "
                                     "quantizes and runs the whole model itself)")
        return self

    @model_validator(mode="after")
    def _needs_calibration(self):
        if self.activations is not None and not self.activations.dynamic and self.calibration is None:
            raise FieldError(("calibration",), "static activations (dynamic: false) need a calibration section")
        if self.method.needs_calibration and self.calibration is None:
            raise FieldError(("calibration",), f"method {self.method.name} needs a calibration section "
                             "(e.g. calibration: {dataset: text, size: 64})")
        if self.method.needs_calibration and "embedding" in self.ops:
            raise FieldError(("ops",), f"method {self.method.name} applies to linear ops (linear, lm_head), not "
                             "embedding; quantize embeddings in a scheme of their own")
        if self.method.name == "qat" and self.weights is not None and self.weights.format != "int":
            raise FieldError(("method", "name"), f"qat trains integer grids; weights.format "
                             f"{self.weights.format} is a value table (use format: int)")
        around = [op for op in self.ops if op in ("attention", "residual")]
        if around and self.activations is None and self.runtime is None:
            raise FieldError(("ops",), f"op '{around[0]}' quantizes activations (the inputs of the attention "
                             "matmuls or residual adds) with the scheme's activations spec, and this scheme has "
                             "none (add activations: {bits: 8, granularity: per_token})")
        if self.method.name == "smoothquant" and self.activations is None:
            raise FieldError(("method", "name"), "smoothquant balances activation and weight ranges for "
                             "quantized activations; this scheme has none (use rtn, gptq or awq)")
        return self

    @model_validator(mode="after")
    def _overrides_valid(self):
        from pydantic import ValidationError

        for i, o in enumerate(self.overrides):
            try:
                self.recipe(o)
            except ValidationError as e:      # what the override makes of the scheme is not a valid scheme
                first = e.errors(include_url=False)[0]
                cause = (first.get("ctx") or {}).get("error")
                loc = tuple(first.get("loc", ())) + (cause.loc if isinstance(cause, FieldError) else ())
                msg = str(cause) if cause is not None else first["msg"]
                raise FieldError(("overrides", i, *(loc if loc and loc[0] in ("weights", "activations", "method")
                                                    else ())), msg) from None
        return self

    def recipe(self, override: "Override") -> Optional["Scheme"]:
        """The scheme the modules `override` matches are quantized with (None: they are skipped)."""
        if override.skip:
            return None
        data = self.model_dump(mode="json", exclude={"overrides", "if_fails"})
        for key in ("weights", "activations", "method"):
            if key in override.model_fields_set:
                value = getattr(override, key)
                data[key] = None if value is None else value.model_dump(mode="json")
        if "method" in override.model_fields_set or self.method.name == "qat":
            data.setdefault("method", {"name": "rtn"})
        return Scheme.model_validate(data)

    @property
    def uses_calibration(self) -> bool:
        """Calibration data is run: static activation ranges or a calibrated method (here or in an override)."""
        static = self.activations is not None and not self.activations.dynamic
        return static or self.method.needs_calibration or any(
            r is not None and r.uses_calibration for r in map(self.recipe, self.overrides))

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # a round-to-nearest scheme of qbench's engine dumps exactly as before methods and runtimes existed
        # (meta.json, --resume checks)
        data = handler(self)
        if self.method.name == "rtn":
            data.pop("method", None)
        if self.if_fails is None:
            data.pop("if_fails", None)
        if not self.overrides:
            data.pop("overrides", None)
        if self.mixed is None:
            data.pop("mixed", None)
        if self.runtime is None:
            data.pop("runtime", None)
        else:            # a runtime scheme dumps as written: what it must leave out stays out (it re-validates)
            for key in ("weights", *_ENGINE_ONLY):
                data.pop(key, None)
        return data


class ModelRef(_Strict):
    """A model to benchmark."""

    id: str = Field(
        min_length=1, description="A bundled model (`minilm`: all-MiniLM-L6-v2; `reflm`: qbench's reference LM; "
        "`smollm2-135m`: SmolLM2-135M-Instruct from a Q4_1 GGUF; `gemma3-270m`: Gemma-3-270M from a Q4_K_M GGUF, "
        "optional, under the Gemma Terms of Use), `hf:<hub id or local directory>` for any transformers model, or "
        "`gguf:<path to a .gguf file>` for any GGUF file transformers can dequantize. A GGUF model's baseline is "
        "the fp32 dequantization of its already-quantized weights (the card says so)."
    )
    name: Optional[str] = Field(None, max_length=80, description="Display name (defaults to the id).")
    task: Literal["auto", "encoder", "causal_lm"] = Field(
        "auto", description="How the model is run and scored; auto reads the model config."
    )
    revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit) for hf: ids.")
    trust_remote_code: bool = Field(False, description="Allow code shipped with the model to run (hf: ids only).")
    allow_pickle: bool = Field(
        False, description="Allow pickle weight files (.bin), which can run code when loaded; by default "
        "only safetensors weights are read (hf: ids only)."
    )

    @property
    def display(self) -> str:
        return self.name or self.id


class Baseline(_Strict):
    """The unquantized reference every scheme is compared against."""

    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "fp16", description="Baseline precision. Resolved against the hardware: a CPU without native "
        "fp16/bf16 math runs fp32 instead, and the card says so. auto: fp16 on GPUs, fp32 on CPUs."
    )


class Workload(_Strict):
    """A dataset the models are measured on."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique workload name, e.g. text or code.")
    dataset: str = Field(
        description="`builtin:text` (English prose shipped with CPython), `builtin:code` (Python "
        "standard library source), or a path to a .txt (blank-line separated) or .jsonl ({text: ...}) file."
    )


class Measure(_Strict):
    """What is measured and how often."""

    batch_sizes: tuple[int, ...] = Field(
        (1, 8), min_length=1, description="Batch sizes for latency and throughput."
    )
    seq_len: int = Field(128, ge=8, le=8192, description="Tokens per sequence.")
    warmup: int = Field(3, ge=0, le=1000, description="Untimed runs before timing.")
    repeats: int = Field(20, ge=3, le=10000, description="Timed runs per variant and batch size.")
    eval_samples: int = Field(64, ge=4, le=100000, description="Evaluation samples for quality metrics.")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="torch CPU threads (default: torch's).")
    seed: int = Field(0, description="Seed for data sampling and bootstrap intervals.")
    lm_topk: int = Field(
        128, ge=1, le=1_000_000, description="Causal LMs: baseline next-token tokens kept per position (the "
        "cached reference); KL is computed over them plus one bucket for the rest of the vocabulary."
    )
    prompt_tokens: int = Field(
        32, ge=1, le=8192, description="Causal LMs: tokens of each held-out sample used as a generation prompt."
    )
    generate_tokens: int = Field(
        32, ge=0, le=4096, description="Causal LMs: greedy continuation length compared with the baseline's "
        "(0: no generation)."
    )
    decode_tokens: int = Field(
        16, ge=1, le=4096, description="Causal LMs: decode steps timed after the seq_len-token prefill."
    )
    isolate: bool = Field(
        False, description="Run each cell in its own process, so a crash in native code fails that cell only."
    )
    cell_timeout_s: Optional[float] = Field(
        None, gt=0, le=604800, description="Fail a cell that runs longer than this many seconds (implies "
        "isolate: the worker process is killed)."
    )
    speedup_ci_width: Optional[float] = Field(
        None, gt=0, lt=2, description="Adaptive repeats: stop timing a batch size once the 95% interval of its "
        "speed-up (prefill and decode for causal LMs) is narrower than this fraction of the speed-up (0.05: about "
        "+-2.5%), checked every 2 repeats from 6 on, so `repeats` becomes the cap; each timing row records the "
        "repeats it took and the card's Setup gives their range. Default: always `repeats`."
    )
    profile: bool = Field(
        False, description="Also profile the first batch size: where the baseline's and the scheme's forward "
        "time goes by module kind (linear, attention, norm, activation, embedding, other) for prefill and one "
        "decode step, with the linears-free ceiling (as `qbench bench model`); shown in the card."
    )

    lm_forward: Literal["transformers", "qbench"] = Field(
        "transformers", description="Causal LMs: how prefill and decode are timed. transformers: the model's own "
        "forward and KV cache. qbench: qbench's decoder forward for Llama, Mistral and Qwen2 models "
        "(engine/graph.py): the same modules, kernels and weights as about 30 ops a layer over a KV cache "
        "allocated once (at decode sizes a layer's q/k/v and gate/up projections run as one call each where "
        "their kernels can join them: the weights side by side, read as one stream; on a float32 CPU model each "
        "decode step is a fixed list of C calls on buffers allocated once), for both sides of each speed-up, so the per-op overhead of the model's own forward "
        "(most of a small model's decode step on a CPU) does not hide the kernels' speed; where it cannot run a "
        "pair (another architecture; attention or residual ops quantized) both sides run the model's own forward "
        "and the timing rows say why. Quality is always measured with the model's own forward."
    )
    memory_reuse: bool = Field(
        True, description="CPU: keep freed memory in the process (glibc malloc's mmap and trim thresholds raised to "
        "1 GiB) so the activations each forward allocates do not come back as fresh pages the kernel must fault in "
        "and zero on every forward (all-MiniLM at batch 8: 11,000 page faults per forward, none with it). Holds for "
        "the whole process, baseline and schemes alike; the card's Hardware and software table says which "
        "allocator setting the run had. false: the C library's defaults."
    )

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # runs made before these settings existed keep their stored experiment unchanged
        data = handler(self)
        for key in ("profile", "speedup_ci_width"):
            if not getattr(self, key):
                data.pop(key, None)
        if self.memory_reuse:
            data.pop("memory_reuse", None)
        if self.lm_forward == "transformers":
            data.pop("lm_forward", None)
        return data

    @field_validator("batch_sizes")
    @classmethod
    def _batch(cls, v):
        if any(b < 1 or b > 4096 for b in v):
            raise ValueError("batch sizes must be between 1 and 4096")
        if len(set(v)) != len(v):
            raise ValueError("batch sizes must be unique")
        return v


class GateMetric(NamedTuple):
    """What the runner records for a metric a gate can judge (a view of qbench.results.metrics)."""

    variants: tuple[str, ...]  # variants the metric is recorded under; the first is a gate's default
    has_ci: bool  # rows carry ci_low / ci_high
    speed: bool  # one row per batch size
    task: Optional[str]  # only measured for this task (encoder or causal_lm); None: every task


# The old public catalogue, derived from the metric registry (qbench.results.metrics) where each metric is declared.
GATE_METRICS: dict[str, GateMetric] = {
    name: GateMetric(m.variants, m.has_ci, m.per_batch, m.task) for name, m in gate_metrics().items()
}


class Gate(_Strict):
    """A pass/fail check on the results: every matching row must satisfy the bound(s); no data counts as a fail."""

    metric: str = Field(
        description="Metric to judge: " + ", ".join(GATE_METRICS) + " (see the card's glossary)."
    )
    min: Optional[float] = Field(
        None, allow_inf_nan=False, description="Lowest allowed value (inclusive). Give min, max or both."
    )
    max: Optional[float] = Field(
        None, allow_inf_nan=False, description="Highest allowed value (inclusive). Give min, max or both."
    )
    use: Literal["value", "ci_low", "ci_high"] = Field(
        "value", description="Which number of a row is judged: the point estimate, or the lower / upper "
        "end of its 95% confidence interval (e.g. ci_low with min: the bound holds with confidence). "
        "Only for metrics with intervals."
    )
    model: Optional[str] = Field(None, description="Only rows of this model (display name or id).")
    scheme: Optional[str] = Field(None, description="Only rows of this scheme.")
    workload: Optional[str] = Field(None, description="Only rows of this workload.")
    batch_size: Optional[int] = Field(
        None, ge=1, description="Only rows of this batch size (speed metrics: latency_ms, "
        "throughput_tok_s, speedup); default: every batch size."
    )
    variant: Optional[Literal["baseline", "quantized", "paired"]] = Field(
        None, description="Which rows of the metric: baseline, quantized or paired (a comparison of both). "
        "Default: paired for speedup, log_ppl_ratio and peak_rss_bytes (recorded only that way), quantized "
        "for every other metric."
    )
    name: Optional[str] = Field(None, min_length=1, max_length=80, description="Label shown in the card.")

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        try:
            gate_metric(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise FieldError((), "a gate needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldError(("max",), f"max ({self.max:g}) is below min ({self.min:g})")
        problem = gate_problem(gate_metric(self.metric), use=self.use, batch_size=self.batch_size,
                               variant=self.variant)
        if problem:
            raise FieldError((problem[0],), problem[1])
        return self

    @property
    def resolved_variant(self) -> str:
        """The variant whose rows are judged (the default made explicit)."""
        return self.variant or gate_metric(self.metric).variants[0]

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        # unset filters are left out, so the card's "Reproduce" YAML shows the gate as it was written
        return {k: v for k, v in handler(self).items() if v is not None}


class Experiment(_Strict):
    """A whole experiment: models x schemes x workloads x batch sizes."""

    schema_version: Literal[1] = Field(description="Version of this file format; must be 1.")
    name: str = Field(pattern=NAME_PATTERN, description="Experiment name; names the reports folder.")
    description: str = Field("", max_length=2000, description="Free text shown in the card.")
    models: tuple[ModelRef, ...] = Field(min_length=1, description="Models to benchmark.")
    device: str = Field("auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
    baseline: Baseline = Field(default_factory=Baseline, description="The unquantized reference.")
    schemes: tuple[Scheme, ...] = Field(min_length=1, description="Quantization schemes to compare.")
    workloads: tuple[Workload, ...] = Field(min_length=1, description="Datasets to measure on.")
    measure: Measure = Field(default_factory=Measure, description="Measurement settings.")
    pairs: tuple[tuple[str, str], ...] = Field(
        (), description="Scheme pairs [A, B] the card compares on the same evaluation sequences (B − A with paired "
        "intervals, text and code side by side), besides the pairs it finds itself: schemes that differ only in "
        "method or weight format, or only in ops."
    )
    gates: tuple[Gate, ...] = Field(
        (), description="Pass/fail checks on the results, shown near the top of the card; `qbench run` "
        "exits with 3 when one fails or has no data to judge."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_scheme_per_budget(cls, data):
        """A mixed scheme with a list of budgets becomes one scheme per budget, named <name>-<budget>b."""
        if not isinstance(data, dict) or not isinstance(data.get("schemes"), (list, tuple)):
            return data
        out = []
        for s in data["schemes"]:
            mixed = s.get("mixed") if isinstance(s, dict) else None
            budgets = mixed.get("budget_bits") if isinstance(mixed, dict) else None
            if isinstance(budgets, (list, tuple)) and budgets and all(isinstance(b, (int, float)) for b in budgets):
                out += [dict(s, name=f"{s.get('name')}-{b:g}b", mixed=dict(mixed, budget_bits=b)) for b in budgets]
            else:
                out.append(s)
        return dict(data, schemes=out)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"'{v}' is not a device; use auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _unique(self):
        for what, field, names in (("scheme", "schemes", [s.name for s in self.schemes]),
                                   ("workload", "workloads", [w.name for w in self.workloads]),
                                   ("model", "models", [m.display for m in self.models])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                second = [i for i, n in enumerate(names) if n == dupes[0]][1]
                key = "name" if what != "model" or self.models[second].name else "id"
                raise FieldError((field, second, key), f"duplicate {what} names: {', '.join(dupes)}")
        workload_names = {w.name for w in self.workloads}
        for i, s in enumerate(self.schemes):
            ds = s.calibration.dataset if s.calibration else None
            if ds and ds not in workload_names and not _is_dataset_spec(ds):
                raise FieldError(("schemes", i, "calibration", "dataset"),
                    f"scheme '{s.name}': calibration dataset '{ds}' is neither a workload "
                    f"({', '.join(sorted(workload_names))}) nor a dataset (builtin:..., .txt, .jsonl)"
                )
        self._check_gates()
        names = [s.name for s in self.schemes]
        for i, s in enumerate(self.schemes):
            if s.mixed is not None:
                self._check_mixed(i, s, names)
        for i, s in enumerate(self.schemes):
            if s.if_fails is None:
                continue
            where = ("schemes", i, "if_fails")
            if s.if_fails not in names:
                raise FieldError(where, f"unknown scheme '{s.if_fails}'{did_you_mean(s.if_fails, names)}; this "
                                 f"experiment has: {', '.join(names)}")
            if s.if_fails == s.name or self.schemes[names.index(s.if_fails)].if_fails is not None:
                raise FieldError(where, f"'{s.if_fails}' must be a scheme that always runs (not this one, not "
                                 "another conditional scheme)")
            if not self.gates:
                raise FieldError(where, "if_fails needs gates to judge the other scheme by; this experiment has "
                                 "none")
        for i, pair in enumerate(self.pairs):
            for j, name in enumerate(pair):
                if name not in names:
                    raise FieldError(("pairs", i, j), f"unknown scheme '{name}'{did_you_mean(name, names)}; this "
                                     f"experiment has: {', '.join(names)}")
            if pair[0] == pair[1]:
                raise FieldError(("pairs", i), f"a pair compares two different schemes (got {pair[0]} twice)")
        return self

    def _check_mixed(self, i: int, s: "Scheme", names: list[str]) -> None:
        where = ("schemes", i, "mixed")
        if s.runtime is not None or s.overrides:
            raise FieldError(where, "a mixed scheme makes its own per-unit overrides; give it neither runtime nor "
                             "overrides")
        bits = []
        for j, c in enumerate(s.mixed.choices):
            if c == "skip":
                bits.append(32)
                continue
            if c not in names:
                raise FieldError((*where, "choices", j), f"unknown scheme '{c}'{did_you_mean(c, names)}; choices are "
                                 f"schemes of this experiment or skip")
            other = self.schemes[names.index(c)]
            if other.runtime is not None or other.mixed is not None or other.overrides or other.weights is None:
                raise FieldError((*where, "choices", j), f"'{c}' must be a plain engine scheme (no runtime, mixed "
                                 "or overrides)")
            if other.method.name == "qat":
                raise FieldError((*where, "choices", j), f"'{c}' trains the whole model (qat); a unit cannot take it")
            bits.append(other.weights.resolved_bits)
        if len(set(s.mixed.choices)) != len(s.mixed.choices):
            raise FieldError((*where, "choices"), "each choice once")
        b = s.mixed.budget_bits
        if b < min(bits):
            raise FieldError((*where, "budget_bits"), f"{b:g} bits per weight is below the smallest choice "
                             f"({min(bits)} bits before scales): no plan fits")
        if b > max(bits) + 1:
            raise FieldError((*where, "budget_bits"), f"{b:g} bits per weight is above the largest choice "
                             f"({max(bits)} bits plus scales): every unit would get it; raise the choices instead")

    def _check_gates(self) -> None:
        names = {"scheme": [s.name for s in self.schemes], "workload": [w.name for w in self.workloads],
                 "model": [m.display for m in self.models]}
        ids = {m.id for m in self.models}
        for i, g in enumerate(self.gates):
            for what in ("model", "scheme", "workload"):
                v = getattr(g, what)
                if v is None or v in names[what] or (what == "model" and v in ids):
                    continue
                raise FieldError(("gates", i, what), f"unknown {what} '{v}'{did_you_mean(v, names[what])}; "
                                 f"this experiment has: {', '.join(names[what])}")
            if g.batch_size is not None and g.batch_size not in self.measure.batch_sizes:
                raise FieldError(("gates", i, "batch_size"), f"batch size {g.batch_size} is not measured "
                                 f"(measure.batch_sizes: {', '.join(map(str, self.measure.batch_sizes))})")
            task = GATE_METRICS[g.metric].task
            models = [m for m in self.models if g.model in (None, m.display, m.id)]
            if task and models and all(m.task not in ("auto", task) for m in models):
                which = ", ".join(f"{m.display} is {m.task}" for m in models)
                raise FieldError(("gates", i, "metric"),
                                 f"{g.metric} is only measured for {task} models ({which})")

    @model_serializer(mode="wrap")
    def _no_empty_gates(self, handler):
        # an experiment without gates dumps exactly as before gates existed (meta.json, --resume checks)
        data = handler(self)
        if not self.gates:
            data.pop("gates", None)
        if not self.pairs:
            data.pop("pairs", None)
        return data

    def warnings(self) -> list[str]:
        """Suspicious but legal settings, said before anything runs."""
        out, m = [], self.measure
        if m.eval_samples < 30:
            out.append(f"measure.eval_samples: {m.eval_samples} samples give wide quality intervals (30+ advised)")
        if m.repeats < 10:
            out.append(f"measure.repeats: {m.repeats} repeats give wide latency intervals (10+ advised)")
        if m.warmup == 0:
            out.append("measure.warmup: 0 warm-up runs; the first timed runs include one-off costs")
        for i, s in enumerate(self.schemes):
            if s.calibration is not None and not s.uses_calibration:
                out.append(f"schemes[{i}].calibration: unused, this scheme has no static activations")
        for mi, model in enumerate(self.models):
            if model.trust_remote_code or model.allow_pickle:
                out.append(f"models[{mi}]: trust_remote_code/allow_pickle let files of {model.display} run code")
        return out

    def calibration_dataset(self, scheme: Scheme) -> str | None:
        """The dataset spec a scheme calibrates on (workload names resolved)."""
        if scheme.calibration is None:
            return None
        by_name = {w.name: w.dataset for w in self.workloads}
        return by_name.get(scheme.calibration.dataset, scheme.calibration.dataset)


def _is_dataset_spec(s: str) -> bool:
    return s.startswith("builtin:") or s.endswith((".txt", ".jsonl"))
