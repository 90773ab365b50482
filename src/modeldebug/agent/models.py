"""What ``debug_model`` takes and gives: DebuggingRequest (with its analysis and picture options)
and DebuggingResponse (findings, recommendations, the report, each tool's output, the agent's figures)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modeldebug.types import Finding, Fix, Report


class ProfilingConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    warmup: int = Field(5, ge=0)
    iterations: int = Field(20, ge=1, description="Timed iterations of the PerformanceProfiler.")
    device_metrics: bool = True
    max_seconds: float = Field(10.0, gt=0, description="The profiler stops early after this long.")


class AnalysisConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    layer_types: list[str] | None = Field(None, description="Report only layers of these types (class names).")
    gradient_threshold: float = Field(1e-3, gt=0, description="Gradient norms below this are reported as weak.")
    memory_threshold: float | None = Field(None, gt=0, description="Fraction of device memory (or bytes) to alert at.")
    profiling_config: ProfilingConfig = Field(default_factory=ProfilingConfig)
    probe_steps: int = Field(
        100, ge=1,
        description=("Training steps the probe runs on the copy. The rules read medians over windows of 10% of "
                     "a run after 5 grace steps; below ~100 steps those windows are a few minibatches and noise "
                     "decides (fault suite: a healthy GRU read as stalled in 1 of 4 seeds at 60 steps, none of 6 "
                     "at 100; a sigmoid layer that saturates as it trains seen in 1 of 4 at 60, 6 of 6 at 100)."))


class Visualizations(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gradient_flow: bool = False
    activation_histograms: bool = False
    memory_timeline: bool = False
    html: bool | None = Field(None, description="Also render the HTML report (default: when any picture is asked for).")


class DebuggingRequest(BaseModel):
    """What to debug: a model with data (probed on a copy), or a stored run (``run="latest"`` or an id)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: Any = None
    data: Any = Field(None, description="A DataLoader (or any iterable of batches) or one batch: x, (x, y) or a dict.")
    loss_fn: Any = Field(None, description="loss_fn(output, target) or loss_fn(output); default: the model's own loss.")
    optimizer: Any = None
    run: str | None = None
    store: str | None = Field(None, description="Run store for `run` (default: the config's store_path).")
    issue: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    analysis_config: AnalysisConfig = Field(default_factory=AnalysisConfig)
    visualizations: Visualizations = Field(default_factory=Visualizations)
    verify_fixes: bool = Field(False, description=(
        "Try the candidate fixes for the root findings and verify them as `modeldebug fix` does: on the "
        "command (`command`, or a stored run's) when there is one, else by re-probing fresh copies of the model."))
    command: list[str] | None = Field(None, description="The training command `verify_fixes` re-runs (python train.py ...).")


class DebuggerMetrics(BaseModel):
    """The monitor's own figures (the spec's DebuggerMetrics)."""

    analysis_time: float = Field(description="Seconds debug_model took.")
    issues_found: int
    memory_usage: int = Field(description="Bytes the analysis itself held: the probe's copy and the monitor's peak.")
    recommendations: int


class AgentRecommendation(BaseModel):
    type: str
    description: str
    implementation: str | None = None
    finding: str | None = Field(None, description="Kind of the finding it comes from.")
    location: str | None = None
    source: str = "rules"


class DebuggingResponse(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    issues: list[Finding] = Field(description="Findings, those matching the user's issue first.")
    recommendations: list[AgentRecommendation]
    report: Report
    visualizations: dict[str, Any] = Field(default_factory=dict)
    metrics: DebuggerMetrics
    tools: dict[str, Any] = Field(default_factory=dict, description="Each tool's output, in the order they ran.")
    matched: list[int] = Field(default_factory=list, description="Indices into `issues` that match the issue text.")
    focus: list[str] = Field(default_factory=list, description="Topics read from the issue text.")
    notices: list[str] = Field(default_factory=list)
    summary: str | None = Field(None, description="The LM's plain-words summary, when an LM was used.")
    fixes: list[Fix] = Field(default_factory=list, description="With verify_fixes: the fixes tried, the best verified first (also report.fixes).")
