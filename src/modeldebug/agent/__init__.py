"""ModelDebuggingAgent: ``debug_model(DebuggingRequest) -> DebuggingResponse``, the product spec's agent.

Given a model and data it runs a short probe on a copy, never on the user's objects:

1. ``copy.deepcopy((model, optimizer's param groups))`` in one call, so the copied groups hold
   the copied model's parameters (also parameters outside the model, such as a learned loss
   weight); a fresh optimizer of the same class is built over them with the same group
   hyperparameters and loads a deep copy of the original's ``state_dict`` (momentum, Adam moments
   and step counts carry over; ``load_state_dict`` alone would share the state tensors).
2. The probe trains the copy for ``analysis_config.probe_steps`` steps under :func:`watch`
   (every step sampled, an in-memory run store), cycling the loader or repeating the one batch.
   The torch RNG state is forked, so the user's random stream is not advanced either.
3. An exception from the user's model ends the probe and becomes a ``runtime_error`` finding
   (ErrorDiagnoser); the rules run on what was collected up to then.
4. The tools look at the copy and the recorded run; the rules diagnose; an LM (when configured)
   explains and ranks (never required: on any failure its notice is kept and the rules' report
   stands).

With ``run="latest"`` (or a run id) the stored run is analysed instead, and no model is needed;
without an LM of its own the agent shows what an LM said about that run before (stored by
``modeldebug run/report --lm``), marked as the LM's.
The user's ``issue`` text orders the tools and the findings (see ``llm.helpers.match_issue``).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from modeldebug.config import DebuggingConfig
from modeldebug.errors import DebuggingError, MissingExtraError
from modeldebug.llm.helpers import match_issue, tools_for, topics_for
from modeldebug.types import Finding, Report

log = logging.getLogger(__name__)


# --- request and response -------------------------------------------------------------------------


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


# --- the agent ------------------------------------------------------------------------------------


class ModelDebuggingAgent:
    """Probe a model (or read a stored run), run the tools, the rules and optionally an LM.

    ``lm``: LMSettings, a model name, or a dspy LM; default: ``MODELDEBUG_LM`` /
    ``MODELDEBUG_LM_API_BASE`` from the environment, else no LM.
    """

    def __init__(self, config: DebuggingConfig | None = None, *, lm: Any = None, adapter: Any = None):
        from modeldebug.tools import all_tools

        self.config = config or DebuggingConfig()
        if lm is None:
            from modeldebug.llm.settings import resolve_settings

            lm = resolve_settings(check_extra=False)
        self.lm = lm
        self.adapter = adapter
        self.tools = all_tools()

    def debug_model(self, request: DebuggingRequest | dict[str, Any] | None = None, **kwargs: Any) -> DebuggingResponse:
        if request is None:
            request = DebuggingRequest(**kwargs)
        elif isinstance(request, dict):
            request = DebuggingRequest(**request, **kwargs)
        started = time.perf_counter()
        notices: list[str] = []
        if request.run is not None:
            report, tool_out, held = self._from_store(request, notices)
        elif request.model is not None:
            report, tool_out, held = self._from_probe(request, notices)
        else:
            raise DebuggingError("Expected `model` (with `data`) or `run` in the DebuggingRequest but got neither",
                                 "analysis")
        if request.issue:
            report.metrics["issue"] = request.issue
        if request.context:
            report.metrics["context"] = request.context
        if self.lm is not None:
            from modeldebug.llm import enrich_report

            report, notice = enrich_report(report, self.lm, issue=request.issue, context=request.context,
                                           adapter=self.adapter)
            if notice:
                notices.append(notice)
        summary = (report.metrics.get("llm") or {}).get("summary")
        matched = match_issue(request.issue, report.findings)
        rest = [i for i in range(len(report.findings)) if i not in matched]
        issues = [report.findings[i] for i in matched + rest]
        recs = _recommendations(issues, report)
        visuals = self._visualizations(report, request, notices)
        overhead = report.run.monitor_overhead
        metrics = DebuggerMetrics(
            analysis_time=time.perf_counter() - started,
            issues_found=len(issues),
            memory_usage=int(held + (overhead.peak_memory_bytes if overhead else 0)),
            recommendations=len(recs),
        )
        return DebuggingResponse(
            issues=issues, recommendations=recs, report=report, visualizations=visuals, metrics=metrics,
            tools=tool_out, matched=list(range(len(matched))), focus=[t.name for t in topics_for(request.issue)],
            notices=notices, summary=summary,
        )

    # -- a stored run

    def _from_store(self, req: DebuggingRequest, notices: list[str]) -> tuple[Report, dict[str, Any], int]:
        from modeldebug.analysis import analyze
        from modeldebug.store import RunStore

        path = req.store or self.config.store_path
        if path is None or not Path(path).exists():
            raise DebuggingError(f"No run store at {path}: run training under modeldebug first.", "analysis",
                                 {"store": path})
        store = RunStore(path)
        try:
            try:
                run_id = store.resolve(req.run)
                ev = store.load_evidence(run_id)
            except ValueError as exc:
                raise DebuggingError(str(exc), "analysis", {"store": str(path), "run": req.run}) from exc
            report = analyze(ev)
            if self.lm is None:  # what an LM said about this run before (`--lm`), marked as its own
                report = store.with_llm_analysis(run_id, report)
        finally:
            store.close()
        ac = req.analysis_config
        tool_out: dict[str, Any] = {}
        for name in tools_for(req.issue, [t.name for t in self.tools]):
            tool = self._tool(name)
            out = self._guard(tool, notices, lambda: {
                "LayerAnalyzer": lambda: {"layers": tool.from_run(ev, ac.layer_types)},
                "GradientDebugger": lambda: tool.check(ev, ac.gradient_threshold),
                "PerformanceProfiler": lambda: tool.from_run(ev, ac.layer_types),
                "MemoryTracker": lambda: tool.from_run(ev),
                "ErrorDiagnoser": lambda: {"status": ev.run.status,
                                           "errors": [e for e in ev.events if e.get("type") == "exception"]},
            }[name]())
            tool_out[name] = out
        return report, tool_out, 0

    # -- a live model, probed on a copy

    def _from_probe(self, req: DebuggingRequest, notices: list[str]) -> tuple[Report, dict[str, Any], int]:
        import torch
        from torch import nn

        model = req.model
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}")
        if req.data is None:
            raise ValueError("Expected `data` (a DataLoader or a batch) with `model` but got None")
        if req.optimizer is not None and not isinstance(req.optimizer, torch.optim.Optimizer):
            raise TypeError(f"Expected `optimizer` to be a torch.optim.Optimizer but got {type(req.optimizer).__name__}")
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
        with torch.random.fork_rng(devices=devices):
            model_c, opt_c = clone_for_probe(model, req.optimizer)
            report, error, batch = self._probe(model_c, opt_c, req, notices)
            tool_out = self._probe_tools(model_c, opt_c, req, report, error, batch, notices)
        held = _bytes(itertools.chain(model_c.parameters(), model_c.buffers()))
        if opt_c is not None:
            held += _bytes(v for s in opt_c.state.values() for v in s.values() if isinstance(v, torch.Tensor))
        _check_context(req, notices)
        return report, tool_out, held

    def _probe(self, model_c, opt_c, req: DebuggingRequest, notices: list[str]):
        from modeldebug.collect.session import watch
        from modeldebug.store import RunStore

        config = self.config.model_copy(update={"store_path": None, "every": self.config.every or 1})
        store = RunStore(None)
        device = _device(model_c)
        batches = _batches(req.data)
        dbg = watch(model_c, opt_c, config=config, store=store)
        error: tuple[BaseException, int] | None = None
        first_batch = None
        trained = False
        step = 0
        try:
            with dbg:
                bad_after = None
                for step in range(req.analysis_config.probe_steps):
                    try:
                        batch = next(batches)
                    except StopIteration:
                        notices.append(f"The data ran out after {step} batches; the probe stopped there.")
                        break
                    inputs, target = _split(_to(batch, device), model_takes_target=req.loss_fn is None)
                    if first_batch is None:
                        first_batch = (inputs, target)
                    if opt_c is not None:
                        opt_c.zero_grad(set_to_none=True)
                    out = _call(model_c, inputs)
                    loss = _loss(req.loss_fn, out, target)
                    if loss is None:
                        notices.append("No loss: give `loss_fn` (or a model that returns its loss) to check "
                                       "training dynamics; only the forward pass was analysed.")
                        break
                    loss.backward()
                    if opt_c is not None:
                        opt_c.step()
                    else:
                        dbg.step(loss)
                    trained = True
                    if bad_after is None and not bool(torch_isfinite(loss)):
                        bad_after = step
                    if bad_after is not None and step - bad_after >= 3:
                        notices.append(f"The loss became non-finite at probe step {bad_after}; the probe stopped "
                                       "3 steps later.")
                        break
        except Exception as exc:  # the user's model or loss raised: that is the diagnosis
            error = (exc, step)
        try:
            from modeldebug.analysis import analyze

            ev = dbg.evidence()
            report = analyze(ev)
        except Exception as exc:
            raise DebuggingError(f"The probe's run could not be analysed: {type(exc).__name__}: {exc}", "monitoring") from exc
        finally:
            store.close()
        for e in ev.events:
            if e.get("type") == "monitor_error":  # the collector switched itself off: say what the findings cover
                d = e.get("data") or {}
                notices.append(f"The monitor stopped at probe step {e.get('step')} after an internal error in "
                               f"{d.get('hook')} ({d.get('type')}: {d.get('message')}); the findings cover the "
                               "steps before it.")
        if error is not None:
            exc, at = error
            finding = self._tool("ErrorDiagnoser").diagnose(
                exc, model=model_c, step=at)
            report.findings.insert(0, finding)
        elif not trained and not notices:
            notices.append("The probe ran no training step.")
        return report, error, first_batch

    def _probe_tools(self, model_c, opt_c, req, report, error, batch, notices) -> dict[str, Any]:
        ac = req.analysis_config
        pc = ac.profiling_config
        out: dict[str, Any] = {}
        inputs, target = batch if batch is not None else (None, None)
        for name in tools_for(req.issue, [t.name for t in self.tools]):
            tool = self._tool(name)
            if name == "ErrorDiagnoser":
                out[name] = {"error": error[0].__class__.__name__, "step": error[1],
                             "finding": report.findings[0].model_dump(mode="json")} if error else {"error": None}
                continue
            if batch is None or (error is not None and name != "GradientDebugger"):
                out[name] = {"skipped": "the model raised before this tool could run" if error else "no batch"}
                continue
            out[name] = self._guard(tool, notices, {
                "LayerAnalyzer": lambda: {"layers": _layers_from_report(report, ac.layer_types)},
                "GradientDebugger": lambda: _gradient_summary(report, ac.gradient_threshold, tool),
                "PerformanceProfiler": lambda: tool.profile(
                    model_c, inputs, loss_fn=_loss_callable(req.loss_fn), target=target, warmup=pc.warmup,
                    iterations=pc.iterations, layer_types=ac.layer_types, max_seconds=pc.max_seconds),
                "MemoryTracker": lambda: tool.measure(model_c, inputs, loss_fn=_loss_callable(req.loss_fn),
                                                      target=target, optimizer=opt_c),
            }[name])
        return out

    def _tool(self, name: str):
        return next(t for t in self.tools if t.name == name)

    @staticmethod
    def _guard(tool, notices: list[str], fn) -> Any:
        """A tool that fails costs its own output, not the analysis (its error is kept and noted)."""
        try:
            return fn()
        except DebuggingError as exc:
            notices.append(f"{tool.name} failed ({exc.type}): {exc}")
            return {"error": str(exc), "type": exc.type}
        except Exception as exc:
            log.debug("%s failed", tool.name, exc_info=True)
            notices.append(f"{tool.name} failed: {type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}", "type": tool.error_type}

    # -- pictures

    def _visualizations(self, report: Report, req: DebuggingRequest, notices: list[str]) -> dict[str, Any]:
        v = req.visualizations
        m = report.metrics or {}
        types = req.analysis_config.layer_types
        layers = [l for l in m.get("layers") or [] if not types or l.get("type") in types]
        out: dict[str, Any] = {}
        if v.gradient_flow:
            out["gradient_flow"] = {
                "layers": [{"name": l["name"], "type": l["type"], "grad_norm": _last(l.get("grad_norm"))} for l in layers],
                "params": [{"name": p["name"], "grad_norm": _last(p.get("grad_norm")),
                            "update_ratio": _last(p.get("update_ratio"))} for p in m.get("params") or []],
            }
        if v.activation_histograms:
            out["activation_histograms"] = [{"name": l["name"], "type": l["type"], **l["histogram"]}
                                            for l in layers if l.get("histogram")]
        if v.memory_timeline:
            s = m.get("series") or {}
            out["memory_timeline"] = {k: s.get(k, []) for k in ("step", "rss_bytes", "cuda_allocated", "cuda_reserved")}
        want_html = v.html if v.html is not None else bool(out)
        if want_html:
            try:
                from modeldebug.report.html import render_html

                out["html"] = render_html(report, issue=req.issue)
            except (ImportError, MissingExtraError) as exc:
                notices.append(f"HTML report skipped: {exc}")
        return out


# --- the probe's pieces ---------------------------------------------------------------------------


def clone_for_probe(model, optimizer=None):
    """A deep copy of ``model`` and an equivalent optimizer over the copy's parameters (state included)."""
    try:
        if optimizer is None:
            return copy.deepcopy(model), None
        groups = [list(g["params"]) for g in optimizer.param_groups]
        model_c, groups_c = copy.deepcopy((model, groups))
    except Exception as exc:
        raise DebuggingError(f"Could not copy the model for the probe ({type(exc).__name__}: {exc}); "
                             "analyse a stored run instead (run='latest').", "monitoring") from exc
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    new_groups = [{"params": ps, **copy.deepcopy(h)} for ps, h in zip(groups_c, hyper)]
    cls = type(optimizer)
    try:
        try:
            opt_c = cls(new_groups)
        except TypeError:
            opt_c = cls(new_groups, **copy.deepcopy(optimizer.defaults))
        opt_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    except Exception as exc:
        raise DebuggingError(f"Could not rebuild {cls.__name__} over the model's copy ({type(exc).__name__}: {exc})",
                             "monitoring") from exc
    return model_c, opt_c


def _batches(data: Any) -> Iterator[Any]:
    """One batch repeated, or the batches of an iterable, cycled (a one-shot iterator is read once)."""
    import torch

    single = isinstance(data, (torch.Tensor, dict)) or (
        isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor))
    if single:
        return itertools.repeat(data)

    def cycle():
        while True:
            n = 0
            for b in data:
                n += 1
                yield b
            if n == 0:
                raise ValueError("Expected `data` to yield batches but it yielded none")
            if iter(data) is data:  # an iterator: cannot start again
                return

    return cycle()


def _split(batch: Any, model_takes_target: bool = False) -> tuple[Any, Any]:
    """(inputs, target); without a loss_fn the whole batch goes to the model, which returns its loss."""
    import torch

    if isinstance(batch, torch.Tensor) or isinstance(batch, dict):
        return batch, None
    if isinstance(batch, (tuple, list)) and model_takes_target:
        return tuple(batch) if len(batch) > 1 else batch[0], None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        return tuple(batch[:-1]), batch[-1]
    return batch, None


def _call(model, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _loss(loss_fn, out: Any, target: Any):
    import torch

    if loss_fn is not None:
        return loss_fn(out, target) if target is not None else loss_fn(out)
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return out
    if isinstance(out, dict) and isinstance(out.get("loss"), torch.Tensor):
        return out["loss"]
    if isinstance(getattr(out, "loss", None), torch.Tensor):
        return out.loss
    return None


def _loss_callable(loss_fn):
    """The loss the tools use: the given one, or the model's own when it returns a loss."""
    if loss_fn is not None:
        return loss_fn

    def own(out, target=None):
        loss = _loss(None, out, target)
        if loss is None:
            raise ValueError("no loss")
        return loss

    return own


def torch_isfinite(loss) -> bool:
    import torch

    return bool(torch.isfinite(loss.detach()).all())


def _to(batch: Any, device) -> Any:
    import torch

    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch) if isinstance(batch, tuple) else [_to(v, device) for v in batch]
    return batch


def _device(model):
    p = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if p is None else p.device


def _bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _last(values) -> float | None:
    for v in reversed(values or []):
        if v is not None and math.isfinite(v):
            return v
    return None


def _layers_from_report(report: Report, layer_types) -> list[dict[str, Any]]:
    out = []
    for l in report.metrics.get("layers") or []:
        if layer_types and l.get("type") not in layer_types:
            continue
        out.append({"name": l["name"], "type": l["type"], "samples": l.get("samples"),
                    "output_mean": _last(l.get("output_mean")), "output_std": _last(l.get("output_std")),
                    "zero_frac": _last(l.get("zero_frac")), "dead_frac": _last(l.get("dead_frac")),
                    "sat_frac": _last(l.get("sat_frac")), "grad_norm": _last(l.get("grad_norm"))})
    return out


def _gradient_summary(report: Report, threshold: float, tool) -> dict[str, Any]:
    from modeldebug.tools import GRADIENT_FINDINGS

    flow = [{"name": l["name"], "type": l["type"], "grad_norm": _last(l.get("grad_norm"))}
            for l in report.metrics.get("layers") or []]
    flow = [f for f in flow if f["grad_norm"] is not None]
    ratio = flow[0]["grad_norm"] / flow[-1]["grad_norm"] if len(flow) >= 2 and flow[-1]["grad_norm"] else None
    return {
        "threshold": threshold,
        "flow": flow,
        "first_to_last_ratio": ratio,
        "below_threshold": [f["name"] for f in flow if f["grad_norm"] < threshold],
        "findings": [f.model_dump(mode="json") for f in report.findings if f.kind in GRADIENT_FINDINGS],
    }


def _recommendations(issues: list[Finding], report: Report) -> list[AgentRecommendation]:
    out: list[AgentRecommendation] = []
    seen: set[str] = set()
    for f in issues:
        for r in f.recommendations:
            if r.description in seen:
                continue
            seen.add(r.description)
            out.append(AgentRecommendation(type=r.type, description=r.description, implementation=r.implementation,
                                           finding=f.kind, location=f.location, source=f.source))
    for r in (report.metrics.get("llm") or {}).get("recommendations") or []:
        if r.get("description") in seen:
            continue
        seen.add(r.get("description"))
        out.append(AgentRecommendation(type=r["type"], description=r["description"],
                                       implementation=r.get("implementation"), source="llm"))
    return out


def _check_context(req: DebuggingRequest, notices: list[str]) -> None:
    """Say so when the user's context disagrees with the optimizer they passed (a common mix-up)."""
    lr = req.context.get("learning_rate")
    if lr is None or req.optimizer is None:
        return
    actual = [g.get("lr") for g in req.optimizer.param_groups if isinstance(g.get("lr"), (int, float))]
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        return
    if actual and lr > 0 and all(a > 0 and max(a / lr, lr / a) > 2 for a in actual):
        notices.append(f"context says learning_rate={lr:g} but the optimizer's is {actual[0]:g}.")


__all__ = ["AnalysisConfig", "DebuggerMetrics", "DebuggingRequest", "DebuggingResponse", "ModelDebuggingAgent",
           "ProfilingConfig", "Visualizations", "clone_for_probe"]
