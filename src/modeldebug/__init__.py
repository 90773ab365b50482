"""modeldebug: watch a PyTorch training run or an ONNX model, find what is wrong, say how to fix it."""

from modeldebug.config import AlertThresholds, DebuggingConfig, MonitoringConfig
from modeldebug.errors import DebuggingError, MissingExtraError
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

# Names that import torch are loaded on first use: `modeldebug run`'s parent process, the
# report and schema commands never pay for importing torch.
_LAZY = {
    "watch": "modeldebug.collect.session",
    "Debugger": "modeldebug.collect.session",
    "Evidence": "modeldebug.evidence",
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
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modeldebug' has no attribute {name!r}")

__all__ = [
    "AlertThresholds",
    "Debugger",
    "Evidence",
    "RunStore",
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
