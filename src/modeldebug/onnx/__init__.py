"""The ONNX debugger: check, profile, find the first non-finite value, compare with PyTorch.

Every function returns a ``modeldebug.Report``. onnx and onnxruntime are imported when a function
runs, so ``import modeldebug.onnx`` works without the ``onnx`` extra.
"""

from modeldebug.onnx._common import load_model
from modeldebug.onnx.check import analyze_model
from modeldebug.onnx.compare import compare_with_torch
from modeldebug.onnx.nan import find_nonfinite
from modeldebug.onnx.profile import profile_execution

__all__ = ["analyze_model", "compare_with_torch", "find_nonfinite", "load_model", "profile_execution"]
