"""How every part of modeldebug writes a finding: recommendation builders, the Finding builder and
the one conversion of evidence to JSON-safe values.

Rules, the error diagnosis and the ONNX checks build their findings here, so a recommendation or
an evidence value looks the same whichever part found it.

Imports only the standard library at import time: the store (on the light path of ``modeldebug
run``, which loads neither pydantic nor numpy) writes its JSON with ``jsonable``; the builders
import the pydantic types when first called.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

if TYPE_CHECKING:
    from modeldebug.types import Finding, Recommendation

NonFinite = Literal["str", "null", "keep"]


def recommendation(type: str, description: str, implementation: str | None = None) -> Recommendation:
    from modeldebug.types import Recommendation

    return Recommendation(type=type, description=description, implementation=implementation)


def fix(description: str, implementation: str | None = None) -> Recommendation:
    return recommendation("fix", description, implementation)


def optimization(description: str, implementation: str | None = None) -> Recommendation:
    return recommendation("optimization", description, implementation)


def best_practice(description: str, implementation: str | None = None) -> Recommendation:
    return recommendation("best_practice", description, implementation)


def jsonable(value: Any, nonfinite: NonFinite = "str") -> Any:
    """``value`` as plain JSON types: numpy scalars and arrays and torch tensors by ``tolist()``,
    pydantic models by ``model_dump``, mappings with str keys, tuples and sets as lists, and
    anything else unknown as ``str()``.

    ``nonfinite`` says what NaN and infinities become: ``"str"`` ("nan", "inf", "-inf": finding
    evidence, where a reader must see them), ``"null"`` (strict JSON for agents) or ``"keep"``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value) or nonfinite == "keep":
            return float(value)
        return str(float(value)) if nonfinite == "str" else None
    if hasattr(value, "tolist") and hasattr(value, "dtype") and not isinstance(value, type):
        return jsonable(value.tolist(), nonfinite)  # numpy scalars and arrays, tensors: without importing them
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"), nonfinite)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [jsonable(v, nonfinite) for v in sorted(value, key=str)]
    if isinstance(value, (list, tuple)):
        return [jsonable(v, nonfinite) for v in value]
    return str(value)


def make_finding(
    kind: str,
    *,
    severity: str,
    message: str,
    confidence: float = 0.8,
    location: str | None = None,
    step: int | None = None,
    evidence: Mapping[str, Any] | None = None,
    causes: Iterable[str] = (),
    recommendations: Iterable[Recommendation] = (),
    **rest: Any,
) -> Finding:
    """A Finding with JSON-safe evidence, a confidence clamped to [0, 1] and an int step."""
    from modeldebug.types import Finding

    return Finding(
        kind=kind,
        severity=severity,
        message=message,
        confidence=float(min(1.0, max(0.0, confidence))),
        location=location,
        step=None if step is None else int(step),
        evidence=jsonable(dict(evidence or {})),
        causes=list(causes),
        recommendations=list(recommendations),
        **rest,
    )


__all__ = ["best_practice", "fix", "jsonable", "make_finding", "optimization", "recommendation"]
