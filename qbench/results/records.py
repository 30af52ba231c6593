"""The records a run writes, typed: results rows, cell files (cells/<id>.json) and run meta (meta.json).

    record = CellRecord.model_validate(data)                           # what any qbench run wrote
    record = CellRecord.model_validate(data, context={"strict": True})  # what the current runner writes

Two levels, one model each:
- lenient (the default, used by load_results): the shape every qbench version wrote. Only what old or
  unfinished runs lack is optional: a cell's per-cell provenance (hardware, fingerprint, host: added with the
  executors; node: cluster runs only), `seconds`, `started` and `finished` (skipped cells have none), `gpu`
  (CUDA runs only), `traceback` (failed cells only); every field of meta.json (it is written in steps while a
  run goes, and a folder with a bare `{}` still renders a card). Metrics not in the registry are accepted, so
  an old card still renders.
- strict (context={"strict": True}): additionally every field the current runner writes is present, and
  every row names a declared metric in its declared unit, variant and per-batch-size-ness.

Unknown keys are errors at both levels: a field the runner starts writing is added here first. pydantic v2
only; no torch. JSON Schemas: cell_schema() and meta_schema() (qbench.results.schemas).
"""
from __future__ import annotations

from typing import ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from qbench.results.metrics import row_problem

Task = Literal["encoder", "causal_lm"]
Variant = Literal["baseline", "quantized", "paired"]
Status = Literal["ok", "skipped", "failed"]
RunStatus = Literal["running", "ok", "partial", "failed"]


def strict(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("strict"))


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    STRICT_REQUIRED: ClassVar[tuple[str, ...]] = ()  # optional for old runs, written by every current one

    @model_validator(mode="before")
    @classmethod
    def _present_when_strict(cls, data, info: ValidationInfo):
        if isinstance(data, dict) and strict(info):
            missing = [k for k in cls.strict_required(data) if k not in data]
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (every current run writes it)")
        return data

    @classmethod
    def strict_required(cls, data: dict) -> tuple[str, ...]:
        return cls.STRICT_REQUIRED


class Row(_Record):
    """One measured number. Every row has every column (None where it does not apply)."""

    cell: str = Field(description="Cell id: model__scheme__workload.")
    model: str = Field(description="Model display name.")
    task: Optional[Task] = Field(description="encoder or causal_lm.")
    scheme: str = Field(description="Scheme name.")
    workload: str = Field(description="Workload name.")
    variant: Variant = Field(description="baseline, quantized, or paired (a comparison of the two measured "
                             "interleaved).")
    batch_size: Optional[int] = Field(ge=1, description="Batch size for speed rows; empty for quality and size "
                                      "rows.")
    metric: str = Field(description="What was measured (see the card's glossary).")
    value: Optional[float] = Field(description="Point estimate (median for timings, mean or proportion for "
                                   "quality).")
    ci_low: Optional[float] = Field(description="Lower end of the 95% confidence interval.")
    ci_high: Optional[float] = Field(description="Upper end of the 95% confidence interval.")
    p10: Optional[float] = Field(description="10th percentile of the raw samples (timings).")
    p90: Optional[float] = Field(description="90th percentile of the raw samples (timings).")
    n: Optional[int] = Field(ge=0, description="Number of samples behind the value.")
    unit: str = Field(description="Unit of value.")
    method: str = Field(description="How the value and its interval were computed.")
    kernel: str = Field(description="Kernel(s) that ran the quantized ops of this cell.")
    status: Status = Field(description="ok, skipped or failed.")
    reason: str = Field(description="Why a cell was skipped or failed.")

    @model_validator(mode="after")
    def _declared_when_strict(self, info: ValidationInfo):
        if strict(info):
            problem = row_problem(self.metric, self.unit, self.variant, self.batch_size)
            if problem:
                raise ValueError(problem)
        return self


class QuantEntry(_Record):
    """One module of the realized quantization map (qbench.engine.api.ModuleRecord.to_dict())."""

    name: str
    op: Literal["linear", "lm_head", "embedding", "attention", "residual"]
    shape: Union[tuple[int, int], tuple[int]] = Field(description="(out, in) for linear ops, (rows, dim) for embeddings, (heads, "
                                   "head_dim) for attention, (hidden,) for residual.")
    requested: bool = Field(description="The scheme's ops cover this module kind.")
    applied: bool
    reason: str = Field(description="Why it was left alone, or '' when applied.")
    kernel: str = Field(description="Kernel that runs it ('baseline' when left alone).")
    weights: str = Field(description="Realized weight format, e.g. 'int8 sym per_channel'.")
    activations: str = Field(description="Realized activation format, or 'float'.")
    sqnr_db: Optional[float] = Field(description="Weight SQNR in dB; None when not applied or exact.")
    bytes_before: int = Field(ge=0)
    bytes_after: int = Field(ge=0)
    override: str = Field("", description="The scheme override whose recipe the module got (its glob); absent "
                          "when none matched.")


class KernelInfo(_Record):
    backend: str
    emulated: bool


class CalibrationInfo(_Record):
    dataset: str
    size: int = Field(ge=0)
    method: str
    hash: str
    overlap_with_eval: Optional[int] = Field(ge=0, description="Calibration samples also in the evaluation set.")
    seq_len: int = Field(ge=1)
    used: bool = Field(description="False when the samples were not run (dynamic activations and a method that "
                       "needs no calibration).")


class TrainingInfo(_Record):
    """What a training method (qat) did: qbench.engine.calibrated.MethodRun.summary()["training"]."""

    steps: int = Field(ge=0, description="Optimizer steps taken.")
    tokens: int = Field(ge=0, description="Real (unpadded) calibration tokens seen over all steps.")
    seconds: float = Field(ge=0, description="Wall time of the training (of the cell that trained, when reused).")
    loss: tuple[float, ...] = Field(description="The training loss after each step.")
    resumed_from: int = Field(ge=0, description="The step a checkpoint resumed the training at (0: none).")
    reused: bool = Field(description="The trained state was loaded from an earlier cell of the same scheme (its "
                         "other workload, or an earlier run), not trained again.")
    threads: int = Field(ge=1, description="Torch threads the cell ran with.")


class MethodInfo(_Record):
    """What the scheme's quantization method did (qbench.engine.calibrated.MethodRun.summary())."""

    name: str = Field(description="rtn, smoothquant, gptq, awq or qat.")
    params: dict[str, Union[bool, int, float, str]] = Field(description="Every parameter, defaults filled in.")
    seconds: float = Field(ge=0, description="Wall time of the method's own work: calibration passes, scale "
                           "searches and choosing codes (kernel packing excluded).")
    calibration_passes: Optional[int] = Field(None, ge=0, description="Forward passes over the calibration "
                                              "samples (sequential GPTQ: one per block).")
    calibration_tokens: Optional[int] = Field(None, ge=0, description="Calibration tokens each layer saw.")
    groups: Optional[int] = Field(None, ge=0, description="SmoothQuant / AWQ: groups of linears sharing an input.")
    folded_into: Optional[tuple[str, ...]] = Field(None, description="Norms the smoothing scales were folded "
                                                   "into.")
    input_scale_layers: Optional[tuple[str, ...]] = Field(None, description="Layers that divide their input by "
                                                          "the smoothing scale themselves.")
    training: Optional[TrainingInfo] = Field(None, description="qat: the training run.")
    overrides: Optional[tuple[dict, ...]] = Field(None, description="The methods of the scheme's overrides (each "
                                                  "with its glob under `match`), where one differs from rtn.")
    shared_from: Optional[str] = Field(None, description="The cell that quantized the model this cell measured "
                                       "(a scheme quantizes the same way for every workload, so a worker quantizes "
                                       "it once); the method's numbers are that cell's.")


class EvaluationInfo(_Record):
    dataset: str
    n: int = Field(ge=0)
    hash: str
    seq_len: int = Field(ge=1)


class CellRecord(_Record):
    """cells/<cell id>.json: one model x scheme x workload, ok, failed or skipped."""

    cell: str
    model: str
    scheme: str
    workload: str
    task: Optional[Task] = Field(description="None until the model loaded (failed or skipped cells).")
    status: Status
    reason: str
    rows: tuple[Row, ...]
    quant_map: tuple[QuantEntry, ...]
    unmatched_excludes: tuple[str, ...] = Field(description="Exclusion globs of the scheme that matched no module.")
    kernels: tuple[str, ...]
    kernel_info: dict[str, KernelInfo]
    calibration: Optional[CalibrationInfo]
    evaluation: Optional[EvaluationInfo]
    method: Optional[MethodInfo] = Field(None, description="The quantization method, its parameters and the time "
                                         "it took; None for failed or skipped cells and runs before methods.")
    seconds: Optional[float] = Field(None, ge=0, description="Wall time of the cell, model loading included "
                                     "(None when its worker died before it could report).")
    started: Optional[str] = Field(None, description="When the cell started on the machine that ran it (ISO 8601, "
                                   "UTC, microseconds; None when its worker died before it could report).")
    finished: Optional[str] = Field(None, description="When the cell ended (ISO 8601, UTC): on the machine that ran "
                                    "it, or when the driver learned that its worker died.")
    traceback: Optional[str] = Field(None, description="Failed cells: the last frames of the exception.")
    gpu: Optional[dict] = Field(None, description="CUDA cells: telemetry, peak memory, fit (qbench.runner.gpu).")
    hardware: Optional[dict] = Field(None, description="The machine the cell ran on (HardwareInfo.to_dict()).")
    fingerprint: Optional[str] = Field(None, description="Short stable id of that machine's hardware.")
    host: Optional[str] = Field(None, description="Hash of the host name the cell ran on.")
    profile: Optional[dict] = Field(None, description="measure.profile: where the time goes at the first batch "
                                    "size (qbench.runner.profile): batch_size, seq_len, repeats and, per phase, "
                                    "the baseline's and the quantized model's rows.")
    runtime: Optional[dict] = Field(None, description="Schemes run by a peer runtime (qbench.runtimes): its name, "
                                    "version, file type, threads, KV cache, realized tensor types and file bytes.")
    node: Optional[str] = Field(None, description="The cluster's id of the node that ran the cell (Ray node id); "
                                "None for cells run by a local executor.")
    sequences: Optional[dict[str, list[float]]] = Field(
        None, description="Per evaluation sequence (sample), in evaluation order, what scheme-vs-scheme comparisons "
        "pair on: causal LMs tokens, kl, nll_base, nll_quant, top1; encoders cosine.")
    mixed: Optional[dict] = Field(None, description="Mixed schemes: the budget, the plan (a choice per unit), its "
                                  "predicted score, planned and held bits per weight, and the sensitivity "
                                  "measurement it came from.")
    triggered_by: Optional[dict] = Field(None, description="Cells of a conditional scheme (if_fails): the scheme "
                                         "whose gates decided, and the gates it failed (none: the cell was skipped).")
    source_grid: Optional[str] = Field(None, description="Why this scheme's weight grid contains the grid the "
                                       "model's source file already stored (its zero error there measures "
                                       "nothing); None when it provably does not, or the model was float.")

    @classmethod
    def strict_required(cls, data: dict) -> tuple[str, ...]:
        return ("seconds", "started", "finished") if data.get("status") in ("ok", "failed") else ()

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo):
        for i, r in enumerate(self.rows):
            for key in ("cell", "model", "scheme", "workload"):
                if getattr(r, key) != getattr(self, key):
                    raise ValueError(f"rows[{i}] names {key} {getattr(r, key)!r}, the cell {getattr(self, key)!r}")
        if strict(info) and self.status == "ok" and self.task is None:
            raise ValueError("a finished cell names its task")
        return self


class Baseline(_Record):
    requested: str
    resolved: str
    note: str


class SkippedCell(_Record):
    cell: str
    reason: str


class PlanInfo(_Record):
    cells: tuple[str, ...] = Field(description="Every cell id of the plan, skipped ones included, in order.")
    skipped: tuple[SkippedCell, ...]


class LmReference(_Record):
    """How a causal LM's baseline reference on one dataset was found."""

    key: str
    cache: Literal["hit", "miss"]
    k: int = Field(ge=1)
    vocab: int = Field(ge=1)


class ModelInfo(_Record):
    """meta.json models.<display name>: provenance of a model as loaded."""

    id: str
    task: Task
    source_origin: str
    params: int = Field(ge=0)
    baseline_bytes: int = Field(ge=0)
    max_positions: Optional[int]
    lm_reference: Optional[dict[str, LmReference]] = Field(None, description="Causal LMs: per dataset.")
    source_format: Optional[dict] = Field(None, description="Models whose weights were quantized before qbench "
                                          "saw them (GGUF): file, sha256, architecture, file type, tensors per "
                                          "GGML type (LoadedModel.source_format without its per-tensor list).")


class ExecutorInfo(_Record):
    """meta.json executors[]: one entry per session that ran cells of the run (a resumed run adds one)."""

    name: str = Field(description="inprocess, subprocess or ray.")
    nodes: int = Field(ge=1, description="Nodes that could run a timed cell when the session started (one "
                       "for local executors).")
    slots: int = Field(ge=1, description="Timed cells that could run at once: one per node on CPU, one per GPU "
                       "on CUDA (one for local executors).")


class RunMeta(_Record):
    """meta.json: what was asked, on what, by which code, and how far the run got."""

    STRICT_REQUIRED: ClassVar[tuple[str, ...]] = (
        "qbench_version", "created", "finished", "experiment_name", "experiment_file", "experiment", "hardware",
        "hardware_summary", "fingerprint", "git_commit", "device", "command", "baseline", "plan", "status",
        "executors")

    qbench_version: Optional[str] = None
    created: Optional[str] = Field(None, description="When the run started (ISO 8601, UTC).")
    finished: Optional[str] = Field(None, description="When it ended; None while it runs.")
    experiment_name: Optional[str] = None
    experiment_file: Optional[str] = None
    experiment: Optional[dict] = Field(None, description="The resolved experiment (qbench.schema.Experiment "
                                       "dumped as JSON); validated by the schema, not here.")
    hardware: Optional[dict] = Field(None, description="HardwareInfo.to_dict() of the machine that started it.")
    hardware_summary: Optional[str] = None
    fingerprint: Optional[str] = None
    git_commit: Optional[str] = None
    device: Optional[str] = None
    command: Optional[str] = None
    baseline: Optional[Baseline] = None
    plan: Optional[PlanInfo] = None
    status: Optional[RunStatus] = None
    models: dict[str, ModelInfo] = Field(default_factory=dict, description="Filled as each model loads.")
    executors: tuple[ExecutorInfo, ...] = Field((), description="What ran the cells, one entry per session "
                                                "(started or resumed), in order.")
