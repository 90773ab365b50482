"""Public data models: the report contract (docs/report-contract.md) and the metrics users read.

Pydantic models for everything that crosses a boundary (JSON report, API results). Records the
collector produces at every step are plain dataclasses in ``modeldebug.records`` instead: they are
made thousands of times and never validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from modeldebug.metrics import Metrics, Series, TrainingMetrics

SCHEMA_ID = "modeldebug.report/1"

Severity = Literal["high", "medium", "low"]
SEVERITY_ORDER: dict[str, int] = {"high": 0, "medium": 1, "low": 2}

FindingKind = Literal[
    # training dynamics
    "exploding_gradient",
    "vanishing_gradient",
    "nan_or_inf",
    "dead_relu",
    "saturated_activation",
    "poor_weight_init",
    "unchanged_weights",
    "loss_not_decreasing",
    "oscillating_loss",
    "loss_spike",
    "gradient_accumulation",
    "overfitting",
    "data_issue",
    # silent bugs: the script runs and "trains", but something in the setup is wrong
    "wrong_loss_input",
    "loss_shape_broadcast",
    "train_eval_mode",
    "lr_schedule_misuse",
    "labels_unrelated",
    "untracked_parameters",
    "weight_decay_too_high",
    "validation_overlap",
    "clip_before_backward",
    "grad_scaler_misuse",
    # resources
    "memory_growth",
    "input_bottleneck",
    "slow_operation",
    "memory_pressure",
    # distributed
    "distributed_desync",
    "straggler_rank",
    "uneven_batches",
    "rank_failure",
    # failures
    "runtime_error",
    # onnx
    "onnx_invalid_model",
    "onnx_shape_error",
    "onnx_unsupported_op",
    "onnx_numerical_mismatch",
    "onnx_nan_or_inf",
    "onnx_slow_node",
]

Cause = Literal[
    "learning_rate_too_high",
    "learning_rate_too_low",
    "bad_weight_init",
    "unnormalized_inputs",
    "wrong_loss_function",
    "missing_zero_grad",
    "zero_grad_misplaced",
    "missing_optimizer_step",
    "parameters_not_in_optimizer",
    "frozen_parameters",
    "detached_graph",
    "saturating_activation_choice",
    "missing_normalization_layer",
    "numerically_unstable_op",
    "graph_kept_alive",
    "slow_data_loading",
    "model_too_large_for_data",
    "label_problem",
    "unshuffled_data",
    "loss_shape_mismatch",
    "wrong_module_mode",
    "scheduler_misuse",
    "weight_decay_too_high",
    "data_leakage",
    "clipping_misplaced",
    "scaler_step_bypassed",
    "export_problem",
    "other",
]

# A team's own rules report built-in kinds or kinds of their own, named `custom.<name>`: the prefix
# keeps them apart from the built-in kinds, which readers of the report may switch on.
CUSTOM_KIND_PATTERN = r"^custom\.[a-z][a-z0-9_]*$"
CustomKind = Annotated[str, StringConstraints(pattern=CUSTOM_KIND_PATTERN)]
_BUILTIN_KINDS = frozenset(get_args(FindingKind))


def is_kind(kind: str) -> bool:
    """Whether ``kind`` can be a finding's kind: a built-in one, or `custom.<name>`."""
    return kind in _BUILTIN_KINDS or bool(re.match(CUSTOM_KIND_PATTERN, str(kind)))


class _Model(BaseModel):
    # Validators are built on first use: the collector imports these types in the watched script.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Recommendation(_Model):
    type: Literal["fix", "optimization", "best_practice"]
    description: str
    implementation: str | None = None


class Finding(_Model):
    kind: FindingKind | CustomKind
    severity: Severity
    confidence: float = Field(ge=0.0, le=1.0)
    location: str | None = None
    step: int | None = None
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    causes: list[Cause] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)
    source: Literal["rules", "llm"] = "rules"
    # Written only when set, so reports made before these fields are written back unchanged.
    id: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="The finding's name in this report: its kind, `kind@location` when the kind occurs more than once.")
    caused_by: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="`id` of the finding this one follows from (its cause in this run); null for a root.")
    suppressed: bool = Field(
        False, exclude_if=lambda v: not v,
        description="Expected by the project (a suppression in its configuration, or already in the baseline run): "
                    "kept in the report, not shown with the findings and not counted by --fail-on.")
    suppression_reason: str | None = Field(None, exclude_if=lambda v: v is None,
                                           description="Why it is suppressed: the configuration's reason, or the baseline run.")


class Fix(_Model):
    """One candidate fix `modeldebug fix` tried on a short re-run of the script (see docs/report-contract.md)."""

    addresses: list[str] = Field(description="The kinds of the root findings this candidate addresses.")
    change: str = Field(description="What the candidate changed, in words (applied without editing the script).")
    verified: bool = Field(description="The addressed finding is gone, no new medium/high finding, and the loss improved by more than noise.")
    reason: str = Field(description="Why it was verified or rejected.")
    loss_before: float | None = Field(None, description="Training loss at the end of the window, unfixed (null when not measured).")
    loss_after: float | None = Field(None, description="The same with the candidate applied.")
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    findings_after: list[str] = Field(default_factory=list, description="Medium/high finding kinds of the re-run with the candidate.")
    patch: str | None = Field(None, description="A unified diff of the script for `git apply` (paths relative to the directory the fix ran in); null when the change's line is not in the script (the reason says why).")
    seconds: float = Field(0.0, description="Wall time of the candidate's re-run.")
    loss_curve: Series | None = Field(None, description="The candidate's window: its training loss (step, loss), drawn with the probe's (the report's series).")


class RuleError(_Model):
    """A rule that could not run: its findings are missing from the report, and the report says so."""

    rule: str = Field(description="The rule's id (or the entry point's name).")
    kind: str | None = Field(None, description="The kind the rule reports, when known.")
    source: str = Field("built-in", description="Where the rule comes from: built-in, a rule file's path, or an entry point.")
    error: str = Field(description="The exception's type.")
    message: str


@dataclass
class Consequence:
    finding: Finding
    depth: int  # 1: follows from the root itself; 2: from one of its consequences; ...


@dataclass
class Story:
    """One root cause and what follows from it (``Report.stories``): how the reports are told."""

    root: Finding
    consequences: list[Consequence] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [self.root] + [c.finding for c in self.consequences]


class ModelInfo(_Model):
    name: str
    parameters: int
    trainable: int


class MonitorOverhead(_Model):
    time_fraction: float = Field(description="Time spent in the monitor's own code over the run's wall time.")
    peak_memory_bytes: int = Field(description="Peak bytes of tensors and buffers the monitor itself held.")
    monitor_time_s: float = 0.0
    sampled_steps: int = 0


class Unwatched(_Model):
    """Why a run holds no training step: what its process saw instead (``run.unwatched``)."""

    reason: str = Field(description="One sentence: no training was seen in the watched process, and why.")
    backward_calls: int = Field(0, description="backward() calls made while no model was watched.")
    child_processes: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Processes the script started, by kind (multiprocessing, fork, subprocess, system, spawn), "
                    "target (a function or a command) and count; DataLoader workers are not listed.")


class RunInfo(_Model):
    id: str
    command: list[str] = Field(default_factory=list)
    status: Literal["running", "completed", "crashed", "interrupted", "terminated", "stopped"] = "running"
    exit_code: int | None = None
    # Written only when set, so reports made before it are written back unchanged.
    signal: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="The signal that ended the run (SIGINT: interrupted; SIGTERM, SIGHUP: terminated; SIGKILL, ...).")
    steps: int = 0
    duration_s: float = 0.0
    started_at: float | None = None
    models: list[ModelInfo] = Field(default_factory=list)
    monitor_overhead: MonitorOverhead | None = None
    device: str | None = None
    unwatched: Unwatched | None = Field(
        None, exclude_if=lambda v: v is None,
        description="Set when the run holds no training step: no training was seen, and why (written only then).")
    stopped_by: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="status `stopped`: the finding that stopped the run (--stop-on, md.watch(stop_on=...)), "
                    "as `SEVERITY kind at location (step N)`.")


class Report(_Model):
    """The JSON document every diagnosis can be written as (schema ``modeldebug.report/1``)."""

    schema_: Literal["modeldebug.report/1"] = Field(SCHEMA_ID, alias="schema")
    run: RunInfo
    findings: list[Finding] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=TrainingMetrics, description="Typed by kind of report (modeldebug.metrics).")
    fixes: list[Fix] = Field(
        default_factory=list, exclude_if=lambda v: not v,
        description="Candidate fixes tried by `modeldebug fix`, the best verified first; written only when there are some.")
    rule_errors: list[RuleError] = Field(
        default_factory=list, exclude_if=lambda v: not v,
        description="Rules that raised (or could not be loaded) while this report was made; written only when there are some.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    @property
    def training(self) -> TrainingMetrics | None:
        """``metrics`` of a training run; None for an ONNX command's report."""
        return self.metrics if isinstance(self.metrics, TrainingMetrics) else None

    def shown_findings(self) -> list[Finding]:
        """The findings that are not suppressed: what the terminal and --fail-on count."""
        return [f for f in self.findings if not f.suppressed]

    def sorted_findings(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: (SEVERITY_ORDER[f.severity], -f.confidence))

    def stories(self) -> list[Story]:
        """The findings that are not suppressed as root causes, each with the findings that follow from
        it (``caused_by``), the story with the most severe finding first. Every such finding is in
        exactly one story."""
        shown = [f for f in self.sorted_findings() if not f.suppressed]
        by_id = {f.id: f for f in shown if f.id}
        children: dict[str, list[Finding]] = {}
        roots = []
        for f in shown:
            parent = by_id.get(f.caused_by) if f.caused_by and f.caused_by != f.id else None
            (children.setdefault(parent.id, []) if parent is not None else roots).append(f)
        stories, seen = [], set()
        for root in roots:
            story = Story(root=root)
            todo = [(root, 0)]
            seen.add(id(root))
            while todo:  # depth first: a consequence's own consequences right after it
                f, depth = todo.pop()
                kids = [k for k in children.get(f.id, []) if id(k) not in seen] if f.id else []
                seen.update(id(k) for k in kids)
                for k in reversed(kids):
                    todo.append((k, depth + 1))
                if f is not root:
                    story.consequences.append(Consequence(finding=f, depth=depth))
            stories.append(story)
        # A caused_by loop (never written by the rules) has no root: its findings stand alone.
        stories += [Story(root=f) for f in shown if id(f) not in seen]
        rank = lambda s: min((SEVERITY_ORDER[f.severity], -f.confidence) for f in s.findings)  # noqa: E731
        return sorted(stories, key=rank)

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(by_alias=True, indent=indent)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    @classmethod
    def from_json(cls, text: str | bytes) -> "Report":
        return cls.model_validate_json(text)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return cls.model_json_schema(by_alias=True)


# --- metrics in the product spec's shape (DebugMetrics) -------------------------------------------


class OutputStats(_Model):
    mean: float
    std: float
    min: float
    max: float


class GradientStats(_Model):
    norm: float
    mean: float
    std: float


class LayerMetrics(_Model):
    name: str
    type: str
    step: int | None = Field(None, description="Sampled step these statistics come from (the latest).")
    output_stats: OutputStats | None = None
    gradient_stats: GradientStats | None = None
    zero_fraction: float | None = None
    dead_fraction: float | None = None
    saturated_fraction: float | None = None


class PerformanceMetrics(_Model):
    forward_time: float = Field(description="Median seconds per forward pass.")
    backward_time: float = Field(description="Median seconds per backward pass.")
    optimizer_time: float = 0.0
    data_time: float = 0.0
    step_time: float = 0.0
    memory_usage: float = Field(description="Peak bytes: CUDA allocated on GPU runs, process RSS otherwise.")
    device_utilization: float = Field(
        description="Fraction of step time spent computing (forward, backward, optimizer) rather than waiting for data."
    )


class DebugMetrics(_Model):
    layer_metrics: list[LayerMetrics] = Field(default_factory=list)
    performance_metrics: PerformanceMetrics | None = None
    steps: int = 0
    loss: float | None = Field(None, description="Latest training loss.")
    grad_norm: float | None = Field(None, description="Latest global gradient norm.")
    learning_rates: list[float] = Field(default_factory=list)
