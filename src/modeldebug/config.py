"""DebuggingConfig: what to watch and how closely (the product spec's fields plus collection knobs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modeldebug.store import DEFAULT_PATH

AnalysisLevel = Literal["basic", "detailed", "comprehensive"]


class MonitoringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer_outputs: bool = True
    gradients: bool = True
    memory: bool = True
    performance: bool = True


class AlertThresholds(BaseModel):
    """User limits; crossing one raises a finding (the rules read them)."""

    model_config = ConfigDict(extra="forbid")

    gradient_norm: float | None = Field(None, gt=0)
    memory_usage: float | None = Field(
        None, gt=0, description="Bytes, or a fraction of the device's memory when <= 1."
    )
    accuracy: float | None = Field(None, ge=0, le=1)
    loss: float | None = None


# Presets named by cost: how often per-layer statistics are sampled and what they include.
# `target_overhead` drives the adaptive schedule (see collect.schedule.Adaptive).
_LEVELS: dict[str, dict] = {
    "basic": {"target_overhead": 0.005, "histograms": False},
    "detailed": {"target_overhead": 0.01, "histograms": True},
    "comprehensive": {"target_overhead": None, "histograms": True},  # every step
}


class DebuggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    analysis_level: AnalysisLevel = "detailed"
    target_metrics: list[str] = Field(default_factory=lambda: ["loss", "gradients"])
    monitoring_config: MonitoringConfig = Field(default_factory=MonitoringConfig)
    alert_thresholds: AlertThresholds = Field(default_factory=AlertThresholds)

    every: int | None = Field(
        None, ge=1, description="Sample per-layer statistics every N steps; None picks the level's schedule."
    )
    target_overhead: float | None = Field(
        None, gt=0, lt=1, description="Adaptive schedule's time budget; None takes the level's."
    )
    histograms: bool | None = None
    histogram_bins: int = Field(32, ge=2, le=1024)
    warmup_steps: int = Field(3, ge=0, description="Steps sampled unconditionally at the start.")
    store_path: str | None = Field(
        DEFAULT_PATH, description="SQLite run store; None keeps the run in memory only."
    )

    @model_validator(mode="after")
    def _apply_level(self) -> "DebuggingConfig":
        level = _LEVELS[self.analysis_level]
        if self.target_overhead is None and self.every is None:
            self.target_overhead = level["target_overhead"]
        if self.histograms is None:
            self.histograms = level["histograms"]
        return self
