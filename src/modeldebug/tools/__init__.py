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

The agent calls each tool through ``for_run(evidence, options)`` (a stored run) and
``for_probe(probe)`` (its probe of a model copy). ``base`` holds what the tools share;
``debugging`` and ``profiling`` the tools of each category.
"""

from modeldebug.tools.base import ProbeRun, Tool, preserved, tensor_stats
from modeldebug.tools.debugging import GRADIENT_FINDINGS, ErrorDiagnoser, GradientDebugger, LayerAnalyzer
from modeldebug.tools.profiling import MEMORY_FINDINGS, PERFORMANCE_FINDINGS, MemoryTracker, PerformanceProfiler


def all_tools(gradient_threshold: float = 1e-3) -> list[Tool]:
    return [LayerAnalyzer(), GradientDebugger(gradient_threshold), PerformanceProfiler(), MemoryTracker(), ErrorDiagnoser()]


__all__ = ["ErrorDiagnoser", "GradientDebugger", "LayerAnalyzer", "MemoryTracker", "PerformanceProfiler", "ProbeRun",
           "Tool", "GRADIENT_FINDINGS", "MEMORY_FINDINGS", "PERFORMANCE_FINDINGS", "all_tools", "preserved",
           "tensor_stats"]
