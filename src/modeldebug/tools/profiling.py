"""The profiling tools: PerformanceProfiler (time per phase and per layer) and MemoryTracker (bytes
of parameters, gradients, activations, optimizer state, and growth over a run)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from modeldebug.errors import DebuggingError
from modeldebug.evidence import Evidence
from modeldebug.tools.base import (
    ProbeRun,
    Tool,
    call_model,
    finite,
    findings_of_kinds,
    first_tensor,
    float_tensors,
    layer_type_ok,
    leaves,
    preserved,
    removing,
    tensor_bytes,
)

PERFORMANCE_FINDINGS = ("input_bottleneck", "slow_operation")
MEMORY_FINDINGS = ("memory_growth", "memory_pressure")


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
                            out = call_model(model, inputs)
                        sync()
                        t1 = time.perf_counter()
                    else:
                        out = call_model(model, inputs)
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
        batch = first_tensor(inputs)
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
        for name, m in leaves(model):
            if not layer_type_ok(type(m).__name__, layer_types):
                continue
            types[name] = type(m).__name__

            def pre(module, args, _n=name):
                sync()
                starts[_n] = time.perf_counter()

            def post(module, args, output, _n=name):
                sync()
                totals[_n] = totals.get(_n, 0.0) + time.perf_counter() - starts.pop(_n, time.perf_counter())

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        with removing(handles), torch.no_grad():
            for _ in range(repeats):
                call_model(model, inputs)
        return [{"name": n or "(model)", "type": types[n], "time_s": t / repeats} for n, t in totals.items()]

    def from_run(self, evidence: Evidence, layer_types: Sequence[str] | None = None) -> dict[str, Any]:
        """Timing of a recorded run: medians of each phase, the data-wait fraction, the slowest layers."""
        steps = evidence.steps
        timing = {}
        for col in ("data_s", "forward_s", "backward_s", "optimizer_s", "step_s"):
            v = finite(steps[col]) if len(steps) else np.empty(0)
            timing[col] = float(np.median(v)) if len(v) else None
        step_s = timing.get("step_s") or 0.0
        layers = []
        for info in evidence.layers_in_order():
            if not layer_type_ok(info.type, layer_types):
                continue
            v = finite(evidence.layer(info.name).fwd_time_s)
            if len(v):
                layers.append({"name": info.name, "type": info.type, "time_s": float(np.median(v))})
        layers.sort(key=lambda x: -x["time_s"])
        return {
            "timing_median_s": timing,
            "data_fraction": (timing["data_s"] / step_s) if step_s and timing.get("data_s") is not None else None,
            "slowest_layers": layers[:10],
            "findings": findings_of_kinds(evidence, PERFORMANCE_FINDINGS),
        }

    def for_run(self, evidence: Evidence, options: Any) -> Any:
        return self.from_run(evidence, options.layer_types)

    def _for_probe(self, probe: ProbeRun) -> Any:
        (inputs, target), pc = probe.batch, probe.options.profiling_config
        return self.profile(probe.model, inputs, loss_fn=probe.loss_fn, target=target, warmup=pc.warmup,
                            iterations=pc.iterations, layer_types=probe.options.layer_types, max_seconds=pc.max_seconds)


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
        out: dict[str, Any] = {
            "parameters_bytes": tensor_bytes(model.parameters()),
            "buffers_bytes": tensor_bytes(model.buffers()),
        }
        if optimizer is not None:
            out["optimizer_state_bytes"] = tensor_bytes(v for s in optimizer.state.values() for v in s.values()
                                                  if isinstance(v, torch.Tensor))
        if inputs is not None:
            act: dict[str, int] = {}
            handles = [m.register_forward_hook(lambda mod, a, o, _n=n: act.__setitem__(_n or "(model)", tensor_bytes(float_tensors(o))))
                       for n, m in leaves(model)]
            cuda = torch.cuda.is_available() and any(p.is_cuda for p in model.parameters())
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            try:
                with preserved(model), removing(handles):
                    res = call_model(model, inputs)
                    if loss_fn is not None:
                        loss = loss_fn(res, target) if target is not None else loss_fn(res)
                        loss.backward()
                        out["gradients_bytes"] = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
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
        out: dict[str, Any] = {"findings": findings_of_kinds(evidence, MEMORY_FINDINGS)}
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

    def for_run(self, evidence: Evidence, options: Any) -> Any:
        return self.from_run(evidence)

    def _for_probe(self, probe: ProbeRun) -> Any:
        inputs, target = probe.batch
        return self.measure(probe.model, inputs, loss_fn=probe.loss_fn, target=target, optimizer=probe.optimizer)
