"""``Report.metrics``, typed: what the report's pictures and tables are drawn from.

One model per kind of report, told apart by the keys its JSON carries (no tag is written, so the
JSON is the one readers knew when metrics was a plain dict): ``TrainingMetrics`` (a watched
training run, ``analysis.summarize``) and the four ONNX commands' ``OnnxCheckMetrics``,
``OnnxNanMetrics``, ``OnnxCompareMetrics``, ``OnnxProfileMetrics``. Every kind carries the common
part: the user's ``issue``, the agent's ``context``, and ``llm`` (:class:`LLMSection`, what a
language model said, applied to this report).

Where a writer leaves keys out (the top level, a layer without histograms, an ONNX comparison point)
a field appears in the JSON only when it was set (:class:`Sparse`): a report has the keys its
writer wrote, no nulls for the rest. Top-level keys this version does not know are kept as they are (a
report another version or a user wrote still loads); nested models forbid unknown keys.
Imports nothing from modeldebug: ``types.Report`` builds on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_serializer

if TYPE_CHECKING:
    from modeldebug.types import Finding

Floats = list[Union[float, None]]  # JSON has no NaN: a missing or non-finite value is null


class Strict(BaseModel):
    """Unknown keys are refused; assignments are validated too. Validators are built on first use
    (``defer_build``): a watched script that imports the contract without writing a report pays
    only for the classes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)


class Sparse(Strict):
    """A model whose JSON holds only the fields that were set (given, or assigned later), so that a
    key its writer left out stays out."""

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):
        data = handler(self)
        for name in type(self).model_fields.keys() - self.model_fields_set:
            data.pop(name, None)
        return data

    def unset(self, name: str) -> None:
        """Back to the default, and out of the JSON again."""
        setattr(self, name, type(self).model_fields[name].get_default(call_default_factory=True))
        self.model_fields_set.discard(name)


# --- what a language model said (metrics.llm) ----------------------------------------------------


class FindingKey(Strict):
    """Which rule finding the LM saw under an id: found again by kind, location and step."""

    kind: str
    location: str | None = None
    step: int | None = None


def key_of(finding: "Finding") -> FindingKey:
    return FindingKey(kind=finding.kind, location=finding.location, step=finding.step)


class LLMRecommendation(Strict):
    type: Literal["fix", "optimization", "best_practice"]
    description: str
    implementation: str | None = None
    finding_id: str | None = None
    source: Literal["llm"] = "llm"


class LLMNote(Strict):
    """An issue the LM raised that fits no finding kind (or restates one of no known kind)."""

    type: str
    severity: Literal["high", "medium", "low"]
    description: str
    location: str | None = None
    finding_id: str | None = None
    kind: str | None = None
    source: Literal["llm"] = "llm"


class StoredRef(Strict):
    """The run store's row an analysis was read back from."""

    id: int
    created_at: float


class LLMSection(Sparse):
    """``metrics.llm``: a language model's analysis as applied to this report (its own findings are
    in ``report.findings`` with ``source="llm"``). ``status="fallback"`` carries only ``notice``,
    ``model``, ``issue`` and ``seconds``: the report is then the rules' alone."""

    status: Literal["ok", "fallback"]
    model: str | None = None
    issue: str | None = None
    notice: str | None = Field(None, description="One line: why the LM gave no usable answer.")
    summary: str | None = None
    ranking: list[str] = Field(default_factory=list, description="Finding ids F1, F2, ..., most likely cause first.")
    explanations: dict[str, str] = Field(default_factory=dict, description="Finding id -> the LM's explanation.")
    recommendations: list[LLMRecommendation] = Field(default_factory=list)
    notes: list[LLMNote] = Field(default_factory=list)
    findings_seen: dict[str, FindingKey] = Field(default_factory=dict, description="Id -> the rule finding it saw.")
    added_findings: int | None = None
    seconds: float | None = None
    unmatched: list[str] = Field(default_factory=list, description="Ids of findings the rules no longer report.")
    stored: StoredRef | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def explanation_for(self, finding: "Finding") -> str | None:
        """The LM's explanation of one rule finding, if it gave one."""
        if finding.source == "llm" or not self.explanations:
            return None
        key = key_of(finding)
        return next((self.explanations[fid] for fid, seen in self.findings_seen.items()
                     if seen == key and fid in self.explanations), None)


class _Common(Sparse):
    """What every kind of report's metrics may carry besides its own measurements."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, defer_build=True)
    KIND: ClassVar[str]

    issue: str | None = Field(None, description="The user's description of the problem (--issue).")
    context: dict[str, Any] | None = Field(None, description="What the agent's caller said about the run.")
    llm: LLMSection | None = None


# --- a training run (analysis.summarize) -----------------------------------------------------------


class Series(Sparse):
    """Per-step columns, downsampled to at most a few hundred points (spikes and NaNs kept)."""

    step: Floats = Field(default_factory=list)
    loss: Floats = Field(default_factory=list)
    grad_norm: Floats = Field(default_factory=list)
    lr: Floats = Field(default_factory=list)
    data_s: Floats = Field(default_factory=list)
    forward_s: Floats = Field(default_factory=list)
    backward_s: Floats = Field(default_factory=list)
    optimizer_s: Floats = Field(default_factory=list)
    step_s: Floats = Field(default_factory=list)
    rss_bytes: Floats = Field(default_factory=list)
    cuda_allocated: Floats = Field(default_factory=list)
    cuda_reserved: Floats = Field(default_factory=list)
    # Mixed precision only (a GradScaler): its scale per step, and 1 where it skipped the step.
    loss_scale: Floats = Field(default_factory=list)
    scaler_skipped: Floats = Field(default_factory=list)

    def columns(self) -> dict[str, Floats]:
        """The columns the run has, by name."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in self.model_fields_set}


class StepTimes(Strict):
    """Median seconds of each part of a step (None: never measured)."""

    data_s: float | None = None
    forward_s: float | None = None
    backward_s: float | None = None
    optimizer_s: float | None = None
    step_s: float | None = None


class ValidationSeries(Strict):
    step: Floats = Field(default_factory=list)
    loss: Floats = Field(default_factory=list)
    accuracy: Floats = Field(default_factory=list)


class Histogram(Strict):
    """A layer's output histogram at one sampled step: ``counts`` over equal bins from ``lo`` to ``hi``."""

    step: int
    lo: float | None = None
    hi: float | None = None
    counts: list[int] = Field(default_factory=list)


class LayerSeries(Sparse):
    """One layer's sampled statistics over time (``step`` gives the sampled steps)."""

    name: str
    type: str
    order: int = 0
    samples: int = 0
    step: Floats = Field(default_factory=list)
    output_mean: Floats = Field(default_factory=list)
    output_std: Floats = Field(default_factory=list)
    zero_frac: Floats = Field(default_factory=list)
    dead_frac: Floats = Field(default_factory=list)
    sat_frac: Floats = Field(default_factory=list)
    grad_norm: Floats = Field(default_factory=list)
    fwd_time_s: Floats = Field(default_factory=list)
    histogram: Histogram | None = Field(None, description="The latest histogram.")
    histogram_first: Histogram | None = Field(None, description="The first histogram.")


class ParamSeries(Strict):
    name: str
    module: str | None = None
    step: Floats = Field(default_factory=list)
    norm: Floats = Field(default_factory=list)
    grad_norm: Floats = Field(default_factory=list)
    update_ratio: Floats = Field(default_factory=list)


class MonitorStopped(Strict):
    """The monitor switched itself off after an error in its own code (the script went on)."""

    step: int | None = None
    hook: str | None = None
    error: str = ""


class TrainingMetrics(_Common):
    """Summaries of a watched training run: series for plots, each layer's and parameter's statistics."""

    KIND: ClassVar[str] = "training"

    steps: int = 0
    series: Series | None = None
    timing_median_s: StepTimes | None = None
    first_nonfinite_step: int | None = None
    validation: ValidationSeries | None = None
    layers: list[LayerSeries] = Field(default_factory=list)
    params: list[ParamSeries] = Field(default_factory=list)
    class_counts: dict[str, int] = Field(default_factory=dict, description="Targets seen per class.")
    monitor_stopped: MonitorStopped | None = None


# --- ONNX commands -------------------------------------------------------------------------------------


class OnnxValue(Strict):
    name: str
    type: str | None = None
    shape: list[Union[int, str, None]] | None = None


class OnnxCheckMetrics(_Common):
    """``modeldebug onnx check``: graph facts (all but ``loadable`` absent when the file is no model)."""

    KIND: ClassVar[str] = "onnx_check"

    loadable: bool = True
    ir_version: int | None = None
    opsets: dict[str, int] = Field(default_factory=dict)
    producer: str | None = None
    node_count: int | None = None
    initializer_count: int | None = None
    parameter_count: int | None = None
    op_counts: dict[str, int] = Field(default_factory=dict)
    inputs: list[OnnxValue] = Field(default_factory=list)
    outputs: list[OnnxValue] = Field(default_factory=list)
    dynamic_axes: dict[str, dict[str, Union[int, str]]] = Field(default_factory=dict)
    inputs_without_shape: list[str] = Field(default_factory=list)
    unused_inputs: list[str] = Field(default_factory=list)
    unused_initializers: list[str] = Field(default_factory=list)
    unsupported_ops: list[dict[str, Any]] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list)
    valid: bool | None = None


class OnnxNanMetrics(_Common):
    """``modeldebug onnx nan``: where non-finite values start in the graph."""

    KIND: ClassVar[str] = "onnx_nan"

    values_checked: int = 0
    nonfinite_values: list[str] = Field(default_factory=list)
    nonfinite_value_count: int = 0
    first_node: str | None = None
    fp16_out_of_range: list[dict[str, Any]] = Field(default_factory=list)
    random_inputs: bool = False
    input_stats: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ComparePoint(Sparse):
    """One matched value (a module's output, an op's, or a graph output): PyTorch vs ONNX."""

    module: str | None = None
    module_type: str | None = None
    level: str | None = None
    output: Union[int, str, None] = None
    value: str | None = None
    onnx_node: str | None = None
    op_types: list[str] = Field(default_factory=list)
    shape: list[int] = Field(default_factory=list)
    torch_dtype: str | None = None
    onnx_dtype: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    mismatch_fraction: float | None = None
    ok: bool | None = None
    also: list[str] = Field(default_factory=list)
    fused: list[str] = Field(default_factory=list, description="Modules folded into this value's node (a Conv before its BatchNorm).")


class Tolerances(Strict):
    rtol: float
    atol: float


class OnnxCompareMetrics(_Common):
    """``compare_with_torch`` / ``modeldebug onnx compare``: errors per matched point, in graph order."""

    KIND: ClassVar[str] = "onnx_compare"

    exporter: str | None = None
    onnx_source: str | None = None
    tolerances: Tolerances | None = None
    matched_points: int = 0
    points: list[ComparePoint] = Field(default_factory=list)
    outputs: list[ComparePoint] = Field(default_factory=list)
    skipped_modules: dict[str, Any] = Field(default_factory=dict)
    first_divergence: str | None = None
    timing_s: dict[str, float] = Field(default_factory=dict)
    training_mode_modules: list[str] = Field(default_factory=list)


class Latency(Strict):
    mean: float
    median: float
    p90: float
    min: float


class OpTime(Strict):
    op_type: str
    nodes: int
    mean_us: float = Field(description="Per run: the sum over its nodes of each node's median time over the runs.")
    share: float


class NodeTime(Strict):
    node: str
    op_type: str
    provider: str | None = None
    mean_us: float = Field(description="Per run: the node's median time over the runs (robust to one preempted run).")
    share: float


class OnnxProfileMetrics(_Common):
    """``modeldebug onnx profile``: latency and node time per op type and per node."""

    KIND: ClassVar[str] = "onnx_profile"

    latency_ms: Latency | None = None
    node_time_ms: float = 0.0
    executed_nodes: int = 0
    profiled_runs: int = 0
    op_types: list[OpTime] = Field(default_factory=list)
    top_nodes: list[NodeTime] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list)
    optimization_level: str | None = None
    warmup: int = 0
    iterations: int = 0
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    random_inputs: bool = False


OnnxMetrics = Union[OnnxCheckMetrics, OnnxNanMetrics, OnnxCompareMetrics, OnnxProfileMetrics]
_KINDS: tuple[type[_Common], ...] = (TrainingMetrics, OnnxCheckMetrics, OnnxNanMetrics, OnnxCompareMetrics, OnnxProfileMetrics)
# The key only that kind's writer always sets tells a stored report's kind (no tag is written).
_MARKERS = (("loadable", OnnxCheckMetrics), ("values_checked", OnnxNanMetrics),
            ("matched_points", OnnxCompareMetrics), ("latency_ms", OnnxProfileMetrics))


def metrics_kind(value: Any) -> str:
    """The kind of a metrics value: a model's own, or read from a dict's keys (a training run by default)."""
    if isinstance(value, _Common):
        return value.KIND
    if isinstance(value, dict):
        for key, cls in _MARKERS:
            if key in value:
                return cls.KIND
    return TrainingMetrics.KIND


def _any_of(schema: dict[str, Any]) -> None:
    # The kinds overlap (every field is optional, top-level keys are open): JSON Schema's oneOf would
    # reject a report that several match; the kind is told by metrics_kind, not by the schema.
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")


Metrics = Annotated[
    Union[tuple(Annotated[cls, Tag(cls.KIND)] for cls in _KINDS)],  # type: ignore[misc]
    Discriminator(metrics_kind),
    Field(json_schema_extra=_any_of),
]
