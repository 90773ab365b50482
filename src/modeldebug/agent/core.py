"""ModelDebuggingAgent: a stored run or a probe of a model copy, the tools, the rules and an optional LM."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from modeldebug.agent.models import AgentRecommendation, DebuggerMetrics, DebuggingRequest, DebuggingResponse
from modeldebug.agent.probe import clone_for_probe, loss_callable, run_probe
from modeldebug.config import DebuggingConfig
from modeldebug.errors import DebuggingError, MissingExtraError
from modeldebug.llm.helpers import match_issue, tools_for, topics_for
from modeldebug.metrics import Series, TrainingMetrics
from modeldebug.pipeline import conclude, evaluated_run, with_stored_llm
from modeldebug.tools import ErrorDiagnoser, ProbeRun, Tool, all_tools
from modeldebug.tools.base import last_finite, tensor_bytes
from modeldebug.types import Finding, Report

log = logging.getLogger(__name__)


class ModelDebuggingAgent:
    """Probe a model (or read a stored run), run the tools, the rules and optionally an LM.

    ``lm``: LMSettings, a model name, or a dspy LM; default: ``MODELDEBUG_LM`` /
    ``MODELDEBUG_LM_API_BASE`` from the environment, else no LM.
    """

    def __init__(self, config: DebuggingConfig | None = None, *, lm: Any = None, adapter: Any = None):
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
        if request.verify_fixes:
            report.fixes = self._verified_fixes(request, report, notices)
        report, notice = conclude(report, issue=request.issue, context=request.context, lm=self.lm, adapter=self.adapter)
        if notice:
            notices.append(notice)
        summary = report.metrics.llm.summary if report.metrics.llm is not None else None
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
            notices=notices, summary=summary, fixes=report.fixes,
        )

    def _ordered_tools(self, issue: str | None) -> list[Tool]:
        """The tools, those the issue text points at first."""
        by_name = {t.name: t for t in self.tools}
        return [by_name[name] for name in tools_for(issue, list(by_name))]

    # -- a stored run

    def _from_store(self, req: DebuggingRequest, notices: list[str]) -> tuple[Report, dict[str, Any], int]:
        from modeldebug.store import RunStore

        path = req.store or self.config.store_path
        if path is None:
            raise DebuggingError("No run store at None: run training under modeldebug first.", "analysis",
                                 {"store": path})
        run = evaluated_run(path, req.run, "analysis")  # shared with the tools' calls: changed on a copy
        report = run.report.model_copy(deep=True)
        if self.lm is None:  # what an LM said about this run before (`--lm`), marked as its own
            with RunStore(path) as store:
                report = with_stored_llm(store, run.run_id, report)
        options = req.analysis_config
        tool_out = {tool.name: self._guard(tool, notices, lambda: tool.for_run(run.evidence, options))
                    for tool in self._ordered_tools(req.issue)}
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
            report, error, batch = run_probe(model_c, opt_c, req, self.config, notices)
            if error is not None:
                exc, at = error
                report.findings.insert(0, self._tool(ErrorDiagnoser).diagnose(exc, model=model_c, step=at))
            probe = ProbeRun(model=model_c, optimizer=opt_c, batch=batch, loss_fn=loss_callable(req.loss_fn),
                             report=report, error=error, options=req.analysis_config)
            tool_out = {tool.name: self._guard(tool, notices, lambda: tool.for_probe(probe))
                        for tool in self._ordered_tools(req.issue)}
        held = tensor_bytes(itertools.chain(model_c.parameters(), model_c.buffers()))
        if opt_c is not None:
            held += tensor_bytes(v for s in opt_c.state.values() for v in s.values() if isinstance(v, torch.Tensor))
        _check_context(req, notices)
        return report, tool_out, held

    def _verified_fixes(self, req: DebuggingRequest, report: Report, notices: list[str]) -> list:
        """`modeldebug fix`'s candidates, verified on the command or on re-probes (agent/fixes.py);
        a failure costs the fixes only, with a notice."""
        from modeldebug.agent.fixes import verify_fixes

        try:
            return verify_fixes(req, report, self.config, notices)
        except Exception as exc:
            log.debug("verify_fixes failed", exc_info=True)
            notices.append(f"verify_fixes failed: {type(exc).__name__}: {exc}")
            return []

    def _tool(self, kind: type[Tool]) -> Tool:
        return next(t for t in self.tools if isinstance(t, kind))

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
        m = report.training or TrainingMetrics()
        types = req.analysis_config.layer_types
        layers = [l for l in m.layers if not types or l.type in types]
        out: dict[str, Any] = {}
        if v.gradient_flow:
            out["gradient_flow"] = {
                "layers": [{"name": l.name, "type": l.type, "grad_norm": last_finite(l.grad_norm)} for l in layers],
                "params": [{"name": p.name, "grad_norm": last_finite(p.grad_norm),
                            "update_ratio": last_finite(p.update_ratio)} for p in m.params],
            }
        if v.activation_histograms:
            out["activation_histograms"] = [{"name": l.name, "type": l.type, **l.histogram.model_dump()}
                                            for l in layers if l.histogram]
        if v.memory_timeline:
            s = m.series or Series()
            out["memory_timeline"] = {k: getattr(s, k) for k in ("step", "rss_bytes", "cuda_allocated", "cuda_reserved")}
        want_html = v.html if v.html is not None else bool(out)
        if want_html:
            try:
                from modeldebug.report.html import render_html

                out["html"] = render_html(report, issue=req.issue)
            except (ImportError, MissingExtraError) as exc:
                notices.append(f"HTML report skipped: {exc}")
        return out


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
    for r in report.metrics.llm.recommendations if report.metrics.llm is not None else []:
        if r.description in seen:
            continue
        seen.add(r.description)
        out.append(AgentRecommendation(type=r.type, description=r.description,
                                       implementation=r.implementation, source="llm"))
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
