"""What every tool shares: the Tool base (``run(json) -> json``), tensor statistics, model calls
that leave the model as found, and the stored run a tool call reads."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from modeldebug.errors import DebuggingError, ErrorType
from modeldebug.evidence import Evidence
from modeldebug.findings import jsonable
from modeldebug.store import DEFAULT_PATH as DEFAULT_STORE

if TYPE_CHECKING:
    from modeldebug.types import Report

def tensor_stats(t: torch.Tensor | None) -> dict[str, float] | None:
    """mean, std, min, max, norm of a tensor (the spec's computeStats), plus its non-finite count."""
    if t is None:
        return None
    x = t.detach().float()
    if x.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "norm": 0.0, "nonfinite": 0}
    finite = torch.isfinite(x)
    nonfinite = int((~finite).sum())
    v = x[finite] if nonfinite else x
    if v.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "norm": math.nan,
                "nonfinite": nonfinite}
    return {
        "mean": float(v.mean()),
        "std": float(v.std()) if v.numel() > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "norm": float(v.norm()),
        "nonfinite": nonfinite,
    }


def first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    for attr in ("logits", "last_hidden_state"):  # model outputs of common libraries
        if hasattr(value, attr) and isinstance(getattr(value, attr), torch.Tensor):
            return getattr(value, attr)
    return None


def float_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in float_tensors(v)]
    return []


def call_model(model: nn.Module, inputs: Any, spread: tuple[type, ...] = (tuple, list)) -> Any:
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a sequence of the ``spread`` types, else ``model(inputs)``."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, spread):
        return model(*inputs)
    return model(inputs)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def finite(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def to_float(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def last_finite(values: Sequence[float | None] | None) -> float | None:
    """The last finite value of a series (JSON's null stands for a missing one)."""
    for v in reversed(values or []):
        if v is not None and math.isfinite(v):
            return v
    return None


def layer_type_ok(type_name: str, layer_types: Sequence[str] | None) -> bool:
    return not layer_types or type_name in set(layer_types)


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Run code on a model and leave it as found: ``.grad`` of every parameter and each module's mode."""
    grads = {id(p): p.grad for p in model.parameters()}
    modes = {id(m): m.training for m in model.modules()}
    for p in model.parameters():
        p.grad = None
    try:
        yield
    finally:
        for p in model.parameters():
            p.grad = grads.get(id(p))
        for m in model.modules():
            if id(m) in modes:
                m.training = modes[id(m)]


@contextmanager
def removing(handles: list[Any]) -> Iterator[list[Any]]:
    """Remove the hooks ``handles`` on the way out, also when the code inside raises."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    return leaves or [("", model)]


def load_evidence(spec: dict[str, Any], error_type: ErrorType) -> Evidence:
    """The stored run ``spec`` names, evaluated once for every tool call on it (see modeldebug.pipeline)."""
    from modeldebug.pipeline import evaluated_run

    return evaluated_run(spec.get("store") or DEFAULT_STORE, str(spec.get("run") or "latest"), error_type).evidence


def findings_of_kinds(evidence: Evidence, kinds: Sequence[str]) -> list[dict[str, Any]]:
    from modeldebug.pipeline import findings_of

    return [f.model_dump(mode="json") for f in findings_of(evidence) if f.kind in kinds]


@dataclass
class RunOptions:
    """A JSON call's options, read as the agent's AnalysisConfig is read."""

    layer_types: Sequence[str] | None = None
    gradient_threshold: float | None = None  # None: the tool's own


@dataclass
class ProbeRun:
    """What the agent's probe of a model copy leaves for the tools (see :mod:`modeldebug.agent`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    batch: tuple[Any, Any] | None  # (inputs, target) of the first batch; None: the probe got none
    loss_fn: Callable[..., torch.Tensor]  # the loss the tools use (the model's own when it returns one)
    report: Report
    error: tuple[BaseException, int] | None  # what the user's model raised, at which probe step
    options: Any  # the request's AnalysisConfig: layer_types, gradient_threshold, profiling_config


class Tool:
    """Base: ``name``, ``description``, ``category`` and ``run(json) -> json`` around ``_run(dict)``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    category: ClassVar[str] = "debugging"
    error_type: ClassVar[ErrorType] = "analysis"
    # Its probe output reads only the probe's report, so it is given even when the model raised.
    probe_after_error: ClassVar[bool] = False

    def run(self, input: str) -> str:
        """Agents' entry point: a JSON object (or a run reference) in, a JSON object out."""
        spec = self._parse(input)
        try:
            result = self._run(spec)
        except DebuggingError:
            raise
        except Exception as exc:
            raise DebuggingError(f"{self.name} failed: {type(exc).__name__}: {exc}", self.error_type,
                                 {"input": spec}) from exc
        return json.dumps(jsonable(result, nonfinite="null"))

    def _parse(self, input: str) -> dict[str, Any]:
        text = (input or "").strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DebuggingError(f"{self.name}: input is not valid JSON ({exc})", self.error_type) from exc
            if not isinstance(spec, dict):
                raise DebuggingError(f"{self.name}: expected a JSON object", self.error_type)
            return spec
        return {"run": text or "latest"}

    def _run(self, spec: dict[str, Any]) -> Any:
        """The stored run ``spec`` names: its id and this tool's output on it."""
        ev = load_evidence(spec, self.error_type)
        return {"run": ev.run.id, **self.for_run(ev, RunOptions(spec.get("layer_types"), spec.get("threshold")))}

    def for_run(self, evidence: Evidence, options: Any) -> Any:  # pragma: no cover - abstract
        """The agent's call on a stored run; ``options``: the request's AnalysisConfig."""
        raise NotImplementedError

    def for_probe(self, probe: ProbeRun) -> Any:
        """The agent's call after its probe of a model copy."""
        if probe.batch is None or (probe.error is not None and not self.probe_after_error):
            return {"skipped": "the model raised before this tool could run" if probe.error else "no batch"}
        return self._for_probe(probe)

    def _for_probe(self, probe: ProbeRun) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(category={self.category!r})"
