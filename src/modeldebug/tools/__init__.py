"""The agent's tools: LayerAnalyzer, GradientDebugger, PerformanceProfiler, MemoryTracker, ErrorDiagnoser.

Each tool has ``name``, ``description`` and ``category`` (``debugging`` or ``profiling``), typed
Python methods that do its job on a model or on a stored run's Evidence, and ``run(input: str) ->
str`` taking and returning JSON, for agents. ``run``'s input names a stored run::

    {"run": "latest", "store": ".modeldebug/runs.db", ...tool options...}

(a bare string is taken as the run reference; ErrorDiagnoser takes ``{"error": "traceback text"}``
or the text itself). Failures raise :class:`~modeldebug.errors.DebuggingError` whose ``type`` is
``analysis`` (debugging tools), ``profiling`` (PerformanceProfiler) or ``monitoring`` (MemoryTracker).

Tools that run a model never change it: parameter ``.grad`` and the train/eval mode are restored,
hooks are removed in ``finally``, and nothing is written onto the user's modules or tensors.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from modeldebug.errors import DebuggingError, ErrorType
from modeldebug.evidence import Evidence
from modeldebug.store import DEFAULT_PATH as DEFAULT_STORE
from modeldebug.types import Finding

GRADIENT_FINDINGS = ("exploding_gradient", "vanishing_gradient", "nan_or_inf", "unchanged_weights",
                     "gradient_accumulation", "dead_relu")
PERFORMANCE_FINDINGS = ("input_bottleneck", "slow_operation")
MEMORY_FINDINGS = ("memory_growth", "memory_pressure")


# --- pure helpers -----------------------------------------------------------------------------------


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


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    for attr in ("logits", "last_hidden_state"):  # model outputs of common libraries
        if hasattr(value, attr) and isinstance(getattr(value, attr), torch.Tensor):
            return getattr(value, attr)
    return None


def _float_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _float_tensors(v)]
    return []


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _finite(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def _f(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _layer_type_ok(type_name: str, layer_types: Sequence[str] | None) -> bool:
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
def _hooks(handles: list[Any]) -> Iterator[list[Any]]:
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    return leaves or [("", model)]


def _load_evidence(spec: dict[str, Any], error_type: ErrorType) -> Evidence:
    from modeldebug.store import RunStore

    path = Path(spec.get("store") or DEFAULT_STORE)
    if not path.exists():
        raise DebuggingError(f"No run store at {path}: run training under modeldebug first.", error_type,
                             {"store": str(path)})
    store = RunStore(path)
    try:
        return store.load_evidence(store.resolve(str(spec.get("run") or "latest")))
    except ValueError as exc:
        raise DebuggingError(str(exc), error_type, {"store": str(path)}) from exc
    finally:
        store.close()


def _findings(evidence: Evidence, kinds: Sequence[str]) -> list[dict[str, Any]]:
    from modeldebug.rules import run_rules

    return [f.model_dump(mode="json") for f in run_rules(evidence) if f.kind in kinds]


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj


# --- the tools ------------------------------------------------------------------------------------------


class Tool:
    """Base: ``name``, ``description``, ``category`` and ``run(json) -> json`` around ``_run(dict)``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    category: ClassVar[str] = "debugging"
    error_type: ClassVar[ErrorType] = "analysis"

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
        return json.dumps(_jsonable(result))

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

    def _run(self, spec: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(category={self.category!r})"


class LayerAnalyzer(Tool):
    name = "LayerAnalyzer"
    description = "Analyzes layer activations and gradients"
    category = "debugging"

    def analyze(self, layer: nn.Module, input: Any) -> dict[str, Any]:
        """Forward ``input`` through ``layer``, backward ones, and return activation and gradient statistics.

        The spec's ``analyzeLayer``: ``activations`` (shape and stats of each output), ``gradients``
        (``input``: stats of d(sum of outputs)/d(input), ``parameters``: each parameter's gradient stats).
        The layer's existing ``.grad`` and mode are restored; ``input`` itself is not modified.
        """
        if not isinstance(layer, nn.Module):
            raise TypeError(f"Expected `layer` to be a torch.nn.Module but got {type(layer).__name__}")
        inputs = input if isinstance(input, (tuple, list, dict)) else (input,)

        def prep(v):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v.detach().clone().requires_grad_(True)
            return v

        if isinstance(inputs, dict):
            inputs = {k: prep(v) for k, v in inputs.items()}
            leaves = _float_tensors(list(inputs.values()))
        else:
            inputs = type(inputs)(prep(v) for v in inputs) if isinstance(inputs, tuple) else [prep(v) for v in inputs]
            leaves = _float_tensors(list(inputs))
        activations: list[dict[str, Any]] = []

        def hook(module, args, output):
            for t in _float_tensors(output) or ([output] if isinstance(output, torch.Tensor) else []):
                activations.append({"shape": list(t.shape), "stats": tensor_stats(t)})

        with preserved(layer), _hooks([layer.register_forward_hook(hook)]):
            try:
                output = _call(layer, inputs)
                outs = [o for o in _float_tensors(output) if o.requires_grad]
                if outs:
                    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            except Exception as exc:
                raise DebuggingError(f"LayerAnalyzer: the layer raised {type(exc).__name__}: {exc}", "analysis",
                                     {"layer": type(layer).__name__}) from exc
            gradients = {
                "input": tensor_stats(leaves[0].grad) if leaves else None,
                "parameters": {n: tensor_stats(p.grad) for n, p in layer.named_parameters()},
            }
        return {"layer": type(layer).__name__, "activations": activations, "gradients": gradients}

    def from_run(self, evidence: Evidence, layer_types: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Each recorded layer's latest activation and gradient statistics (optionally only some types)."""
        out = []
        layers = evidence.layers_in_order() or list(evidence.layers.values())
        for info in layers:
            if not _layer_type_ok(info.type, layer_types):
                continue
            t = evidence.layer(info.name)
            entry: dict[str, Any] = {"name": info.name, "type": info.type, "samples": int(len(t))}
            if len(t):
                last = -1
                entry["step"] = int(t.step[last])
                entry["output_stats"] = {k: _f(t[k][last]) for k in ("mean", "std", "min", "max")}
                entry["gradient_stats"] = {"norm": _f(t.grad_norm[last]), "mean": _f(t.grad_mean[last]),
                                           "std": _f(t.grad_std[last])}
                for k in ("zero_frac", "dead_frac", "sat_frac"):
                    entry[k] = _f(t[k][last])
                entry["nonfinite"] = int(np.nansum(np.asarray(t.nonfinite, dtype=float)))
            out.append(entry)
        return out

    def _run(self, spec: dict[str, Any]) -> Any:
        ev = _load_evidence(spec, self.error_type)
        return {"run": ev.run.id, "layers": self.from_run(ev, spec.get("layer_types"))}


class GradientDebugger(Tool):
    name = "GradientDebugger"
    description = "Debugs gradient flow issues"
    category = "debugging"

    def __init__(self, threshold: float = 1e-3):
        if not threshold > 0:
            raise ValueError(f"Expected `threshold` to be > 0 but got {threshold!r}")
        self.threshold = threshold

    def check_model(self, model: nn.Module, threshold: float | None = None) -> dict[str, Any]:
        """The gradients now on ``model``'s parameters (after a backward): norms, missing and weak ones."""
        threshold = self.threshold if threshold is None else threshold
        params = {}
        missing, weak, nonfinite = [], [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                params[name] = {"requires_grad": False}
                continue
            if p.grad is None:
                missing.append(name)
                params[name] = {"grad": None}
                continue
            s = tensor_stats(p.grad)
            params[name] = s
            if s["nonfinite"]:
                nonfinite.append(name)
            elif s["norm"] < threshold:
                weak.append(name)
        return {"threshold": threshold, "parameters": params, "no_gradient": missing,
                "below_threshold": weak, "nonfinite": nonfinite}

    def check(self, evidence: Evidence, threshold: float | None = None) -> dict[str, Any]:
        """Gradient flow of a recorded run: per-layer gradient norms, weak and silent layers, the rules' gradient findings."""
        threshold = self.threshold if threshold is None else threshold
        flow = []
        for info in evidence.layers_in_order():
            g = _finite(evidence.layer(info.name).grad_norm) if len(evidence.layer(info.name)) else np.empty(0)
            if len(g):
                flow.append({"name": info.name, "type": info.type, "grad_norm_median": float(np.median(g)),
                             "grad_norm_last": float(g[-1])})
        weak = [x["name"] for x in flow if x["grad_norm_median"] < threshold]
        ratio = None
        if len(flow) >= 2 and flow[-1]["grad_norm_median"] > 0:
            ratio = flow[0]["grad_norm_median"] / flow[-1]["grad_norm_median"]
        silent = [n for n, p in evidence.params.items() if p.requires_grad and len(evidence.param(n))
                  and not np.isfinite(np.asarray(evidence.param(n).grad_norm, dtype=float)).any()]
        frozen = [n for n, p in evidence.params.items() if not p.requires_grad]
        not_in_opt = [n for n, p in evidence.params.items() if p.requires_grad and not p.in_optimizer]
        g = _finite(evidence.steps.grad_norm) if len(evidence.steps) else np.empty(0)
        return {
            "threshold": threshold,
            "global_grad_norm": {"median": _f(np.median(g)) if len(g) else None, "max": _f(g.max()) if len(g) else None,
                                 "last": _f(g[-1]) if len(g) else None},
            "flow": flow,
            "first_to_last_ratio": ratio,
            "below_threshold": weak,
            "no_gradient": silent,
            "frozen": frozen,
            "not_in_optimizer": not_in_opt,
            "findings": _findings(evidence, GRADIENT_FINDINGS),
        }

    def _run(self, spec: dict[str, Any]) -> Any:
        ev = _load_evidence(spec, self.error_type)
        return {"run": ev.run.id, **self.check(ev, spec.get("threshold"))}


class PerformanceProfiler(Tool):
    name = "PerformanceProfiler"
    description = "Profiles model performance and bottlenecks"
    category = "profiling"
    error_type = "profiling"

    def profile(
        self,
        model: nn.Module,
        inputs: Any,
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        target: Any = None,
        warmup: int = 5,
        iterations: int = 20,
        layer_types: Sequence[str] | None = None,
        max_seconds: float = 10.0,
    ) -> dict[str, Any]:
        """Time forward (and backward with ``loss_fn``) over ``iterations`` after ``warmup``; per-layer forward times.

        Per-layer times come from separate, hooked iterations so the hooks do not distort the
        totals. Runs are cut short after ``max_seconds``. Gradients and modes are restored.
        """
        if warmup < 0 or iterations < 1:
            raise ValueError(f"Expected warmup >= 0 and iterations >= 1 but got {warmup}, {iterations}")
        cuda = any(p.is_cuda for p in model.parameters())
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        fwd, bwd = [], []
        deadline = time.perf_counter() + max_seconds
        try:
            with preserved(model):
                for i in range(warmup + iterations):
                    t0 = time.perf_counter()
                    if loss_fn is None:
                        with torch.no_grad():
                            out = _call(model, inputs)
                        sync()
                        t1 = time.perf_counter()
                    else:
                        out = _call(model, inputs)
                        loss = loss_fn(out, target) if target is not None else loss_fn(out)
                        sync()
                        t1 = time.perf_counter()
                        loss.backward()
                        model.zero_grad(set_to_none=True)
                        sync()
                    t2 = time.perf_counter()
                    if i >= warmup:
                        fwd.append(t1 - t0)
                        if loss_fn is not None:
                            bwd.append(t2 - t1)
                    if time.perf_counter() > deadline and len(fwd) >= 3:
                        break
                layers = self._layer_times(model, inputs, layer_types, sync, repeats=min(5, max(1, len(fwd))))
        except DebuggingError:
            raise
        except Exception as exc:
            raise DebuggingError(f"PerformanceProfiler: the model raised {type(exc).__name__}: {exc}", "profiling") from exc
        fwd_med = statistics.median(fwd)
        batch = _first_tensor(inputs)
        n = int(batch.shape[0]) if batch is not None and batch.dim() else 1
        total_layer = sum(x["time_s"] for x in layers) or 1.0
        for x in layers:
            x["fraction"] = x["time_s"] / total_layer
        layers.sort(key=lambda x: -x["time_s"])
        bottlenecks = [x["name"] for x in layers if x["fraction"] > 0.5 and len(layers) > 2]
        return {
            "iterations": len(fwd),
            "warmup": warmup,
            "forward_time_s": {"median": fwd_med, "p90": float(np.percentile(fwd, 90)), "min": min(fwd)},
            "backward_time_s": {"median": statistics.median(bwd), "p90": float(np.percentile(bwd, 90))} if bwd else None,
            "samples_per_s": n / (fwd_med + (statistics.median(bwd) if bwd else 0.0)),
            "layers": layers[:20],
            "bottlenecks": bottlenecks,
            "device": "cuda" if cuda else "cpu",
        }

    @staticmethod
    def _layer_times(model, inputs, layer_types, sync, repeats: int) -> list[dict[str, Any]]:
        starts: dict[str, float] = {}
        totals: dict[str, float] = {}
        types: dict[str, str] = {}
        handles = []
        for name, m in _leaves(model):
            if not _layer_type_ok(type(m).__name__, layer_types):
                continue
            types[name] = type(m).__name__

            def pre(module, args, _n=name):
                sync()
                starts[_n] = time.perf_counter()

            def post(module, args, output, _n=name):
                sync()
                totals[_n] = totals.get(_n, 0.0) + time.perf_counter() - starts.pop(_n, time.perf_counter())

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        with _hooks(handles), torch.no_grad():
            for _ in range(repeats):
                _call(model, inputs)
        return [{"name": n or "(model)", "type": types[n], "time_s": t / repeats} for n, t in totals.items()]

    def from_run(self, evidence: Evidence, layer_types: Sequence[str] | None = None) -> dict[str, Any]:
        """Timing of a recorded run: medians of each phase, the data-wait fraction, the slowest layers."""
        steps = evidence.steps
        timing = {}
        for col in ("data_s", "forward_s", "backward_s", "optimizer_s", "step_s"):
            v = _finite(steps[col]) if len(steps) else np.empty(0)
            timing[col] = float(np.median(v)) if len(v) else None
        step_s = timing.get("step_s") or 0.0
        layers = []
        for info in evidence.layers_in_order():
            if not _layer_type_ok(info.type, layer_types):
                continue
            v = _finite(evidence.layer(info.name).fwd_time_s)
            if len(v):
                layers.append({"name": info.name, "type": info.type, "time_s": float(np.median(v))})
        layers.sort(key=lambda x: -x["time_s"])
        return {
            "timing_median_s": timing,
            "data_fraction": (timing["data_s"] / step_s) if step_s and timing.get("data_s") is not None else None,
            "slowest_layers": layers[:10],
            "findings": _findings(evidence, PERFORMANCE_FINDINGS),
        }

    def _run(self, spec: dict[str, Any]) -> Any:
        ev = _load_evidence(spec, self.error_type)
        return {"run": ev.run.id, **self.from_run(ev, spec.get("layer_types"))}


class MemoryTracker(Tool):
    name = "MemoryTracker"
    description = "Tracks memory use: parameters, gradients, activations, optimizer state, growth over steps"
    category = "profiling"
    error_type = "monitoring"

    def measure(
        self,
        model: nn.Module,
        inputs: Any = None,
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        target: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> dict[str, Any]:
        """Bytes of parameters, buffers, optimizer state, and (given ``inputs``) of activations and gradients."""
        def nbytes(ts) -> int:
            return int(sum(t.numel() * t.element_size() for t in ts))

        out: dict[str, Any] = {
            "parameters_bytes": nbytes(model.parameters()),
            "buffers_bytes": nbytes(model.buffers()),
        }
        if optimizer is not None:
            out["optimizer_state_bytes"] = nbytes(v for s in optimizer.state.values() for v in s.values()
                                                  if isinstance(v, torch.Tensor))
        if inputs is not None:
            act: dict[str, int] = {}
            handles = [m.register_forward_hook(lambda mod, a, o, _n=n: act.__setitem__(_n or "(model)", nbytes(_float_tensors(o))))
                       for n, m in _leaves(model)]
            cuda = torch.cuda.is_available() and any(p.is_cuda for p in model.parameters())
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            try:
                with preserved(model), _hooks(handles):
                    res = _call(model, inputs)
                    if loss_fn is not None:
                        loss = loss_fn(res, target) if target is not None else loss_fn(res)
                        loss.backward()
                        out["gradients_bytes"] = nbytes(p.grad for p in model.parameters() if p.grad is not None)
            except Exception as exc:
                raise DebuggingError(f"MemoryTracker: the model raised {type(exc).__name__}: {exc}", "monitoring") from exc
            out["activations_bytes"] = sum(act.values())
            out["largest_activations"] = sorted(({"name": k, "bytes": v} for k, v in act.items()),
                                                key=lambda x: -x["bytes"])[:10]
            if cuda:
                out["cuda_peak_bytes_over_base"] = int(torch.cuda.max_memory_allocated() - base)
        out["total_bytes"] = sum(v for k, v in out.items() if k.endswith("_bytes") and isinstance(v, int)
                                 and k != "cuda_peak_bytes_over_base")
        return out

    def from_run(self, evidence: Evidence) -> dict[str, Any]:
        """Memory over a recorded run: peak and growth per step of host RSS and CUDA allocated memory."""
        steps = evidence.steps
        out: dict[str, Any] = {"findings": _findings(evidence, MEMORY_FINDINGS)}
        for col in ("rss_bytes", "cuda_allocated", "cuda_reserved"):
            if not len(steps):
                break
            s = np.asarray(steps.step, dtype=float)
            v = np.asarray(steps[col], dtype=float)
            ok = np.isfinite(v)
            if ok.sum() < 2:
                continue
            slope = float(np.polyfit(s[ok], v[ok], 1)[0])
            out[col] = {"first": float(v[ok][0]), "last": float(v[ok][-1]), "peak": float(v[ok].max()),
                        "growth_per_step": slope}
        return out

    def _run(self, spec: dict[str, Any]) -> Any:
        ev = _load_evidence(spec, self.error_type)
        return {"run": ev.run.id, **self.from_run(ev)}


class ErrorDiagnoser(Tool):
    name = "ErrorDiagnoser"
    description = "Explains an exception raised in training (shape, dtype, device, in-place, out of memory) and how to fix it"
    category = "debugging"

    def diagnose(self, exc: BaseException, model: Any = None, step: int | None = None) -> Finding:
        """A ``runtime_error`` Finding for an exception raised by the user's model or training step;
        with the ``model``, the module it happened in is named by its qualified name."""
        from modeldebug.diagnose import diagnose_exception, module_names_of

        names = module_names_of(model) if model is not None else None
        return diagnose_exception(exc, module_names=names, step=step)

    def diagnose_text(self, text: str) -> Finding:
        """A ``runtime_error`` Finding from an error message or a traceback's text."""
        from modeldebug.diagnose import diagnose_text

        return diagnose_text(text)

    def _parse(self, input: str) -> dict[str, Any]:
        text = (input or "").strip()
        if text.startswith("{"):
            return super()._parse(text)
        return {"error": text}

    def _run(self, spec: dict[str, Any]) -> Any:
        if spec.get("error"):
            return self.diagnose_text(str(spec["error"]))
        ev = _load_evidence(spec, self.error_type)
        exc = [e for e in ev.events if e.get("type") == "exception"]
        if not exc:
            return {"run": ev.run.id, "status": ev.run.status, "finding": None}
        data = exc[-1].get("data") or {}
        if isinstance(data, str):
            data = json.loads(data)
        return {"run": ev.run.id, "status": ev.run.status,
                "finding": self.diagnose_text(f"{data.get('type', 'Error')}: {data.get('message', '')}")}


def all_tools(gradient_threshold: float = 1e-3) -> list[Tool]:
    return [LayerAnalyzer(), GradientDebugger(gradient_threshold), PerformanceProfiler(), MemoryTracker(), ErrorDiagnoser()]


__all__ = ["ErrorDiagnoser", "GradientDebugger", "LayerAnalyzer", "MemoryTracker", "PerformanceProfiler", "Tool",
           "all_tools", "tensor_stats"]
