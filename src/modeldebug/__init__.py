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

__all__ = [
    "AlertThresholds",
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
