"""modeldebug: watch a PyTorch training run or an ONNX model, find what is wrong, say how to fix it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modeldebug._lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers and IDEs; at run time every name is loaded on first use
    from modeldebug.agent import DebuggingRequest, DebuggingResponse, ModelDebuggingAgent
    from modeldebug.analysis import analyze
    from modeldebug.collect.session import Debugger, watch
    from modeldebug.config import AlertThresholds, DebuggingConfig, MonitoringConfig
    from modeldebug.diagnose import explain
    from modeldebug.errors import DebuggingError, MissingExtraError
    from modeldebug.fixes.verify import fix
    from modeldebug.evidence import Evidence
    from modeldebug.live_diagnosis import StopTraining
    from modeldebug.project_config import ConfigError
    from modeldebug.store import RunStore
    from modeldebug.tools import ErrorDiagnoser, GradientDebugger, LayerAnalyzer, MemoryTracker, PerformanceProfiler
    from modeldebug.types import (
        DebugMetrics,
        Finding,
        LayerMetrics,
        PerformanceMetrics,
        Recommendation,
        Report,
        RunInfo,
    )

__version__ = "0.1.0"

# Every name is loaded on first use: `import modeldebug` (and `modeldebug run`'s parent process,
# and the hook `modeldebug run` puts in the watched script) imports neither torch nor pydantic
# until a name that needs them is used.
_LAZY = {
    "AlertThresholds": "modeldebug.config",
    "DebuggingConfig": "modeldebug.config",
    "MonitoringConfig": "modeldebug.config",
    "DebuggingError": "modeldebug.errors",
    "MissingExtraError": "modeldebug.errors",
    "DebugMetrics": "modeldebug.types",
    "Finding": "modeldebug.types",
    "LayerMetrics": "modeldebug.types",
    "PerformanceMetrics": "modeldebug.types",
    "Recommendation": "modeldebug.types",
    "Report": "modeldebug.types",
    "RunInfo": "modeldebug.types",
    "watch": "modeldebug.collect.session",
    "Debugger": "modeldebug.collect.session",
    "Evidence": "modeldebug.evidence",
    "StopTraining": "modeldebug.live_diagnosis",
    "ConfigError": "modeldebug.project_config",
    "RunStore": "modeldebug.store",
    "analyze": "modeldebug.analysis",
    "ModelDebuggingAgent": "modeldebug.agent",
    "DebuggingRequest": "modeldebug.agent",
    "DebuggingResponse": "modeldebug.agent",
    "LayerAnalyzer": "modeldebug.tools",
    "GradientDebugger": "modeldebug.tools",
    "PerformanceProfiler": "modeldebug.tools",
    "MemoryTracker": "modeldebug.tools",
    "ErrorDiagnoser": "modeldebug.tools",
    "explain": "modeldebug.diagnose",
    "fix": "modeldebug.fixes.verify",
}


__getattr__, __dir__ = lazy_exports("modeldebug", _LAZY, globals())


__all__ = [
    "fix",
    "AlertThresholds",
    "ConfigError",
    "Debugger",
    "Evidence",
    "RunStore",
    "StopTraining",
    "analyze",
    "watch",
    "ModelDebuggingAgent",
    "DebuggingRequest",
    "DebuggingResponse",
    "LayerAnalyzer",
    "GradientDebugger",
    "PerformanceProfiler",
    "MemoryTracker",
    "ErrorDiagnoser",
    "explain",
    "DebugMetrics",
    "DebuggingConfig",
    "DebuggingError",
    "Finding",
    "LayerMetrics",
    "MissingExtraError",
    "MonitoringConfig",
    "PerformanceMetrics",
    "Recommendation",
    "Report",
    "RunInfo",
]
