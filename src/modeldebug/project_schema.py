"""The schema of a project's configuration file (see :mod:`modeldebug.project_config`)."""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["high", "medium", "low"]


class Suppression(BaseModel):
    """A finding the project expects: kept in the report, marked suppressed with the reason."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="The finding kind (custom.<name> for a custom rule's).")
    location: str | None = Field(None, description="A glob on the finding's location; none: any location.")
    reason: str = Field(min_length=1, description="Why it is expected: shown in the report.")

    def matches(self, kind: str, location: str | None) -> bool:
        if kind != self.kind:
            return False
        return self.location is None or fnmatch.fnmatchcase(location or "", self.location)


class ProjectConfig(BaseModel):
    """What the configuration file may set (every key optional)."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["basic", "detailed", "comprehensive"] | None = Field(None, description="Analysis level.")
    sampling_budget: float | None = Field(None, gt=0, lt=1, description="Fraction of training time for sampled statistics.")
    live_budget: float | None = Field(None, gt=0, le=0.5, description="Fraction of wall time the live diagnosis may take.")
    every: int | None = Field(None, ge=1, description="Per-layer statistics every N steps (instead of the budget).")
    fail_on: Severity | None = Field(None, description="Exit 1 when a finding reaches this severity.")
    store: str | None = Field(None, description="The SQLite run store (relative to the configuration file).")
    rules: list[str] = Field(default_factory=list, description="Extra rule files (relative to the configuration file).")
    disable: list[str] = Field(default_factory=list, description="Rule ids switched off.")
    severity: dict[str, Severity] = Field(default_factory=dict, description="Rule id or finding kind -> severity.")
    thresholds: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Rule id -> {threshold: value}.")
    suppress: list[Suppression] = Field(default_factory=list, description="Findings the project expects.")


KEYS = tuple(name.replace("_", "-") for name in ProjectConfig.model_fields)
