"""The ONNX debugger: check, profile, find the first non-finite value, compare with PyTorch.

Every function returns a ``modeldebug.Report``. onnx and onnxruntime are imported when a function
runs, so ``import modeldebug.onnx`` works without the ``onnx`` extra. The functions themselves
are loaded on first use: the main CLI mounts ``modeldebug.onnx.cli`` on every start, and
`modeldebug run` should not pay for numpy and the report models through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modeldebug._lazy import lazy_exports

if TYPE_CHECKING:
    from modeldebug.onnx._common import load_model
    from modeldebug.onnx.check import analyze_model
    from modeldebug.onnx.compare import compare_with_torch
    from modeldebug.onnx.nan import find_nonfinite
    from modeldebug.onnx.profile import profile_execution

_LAZY = {
    "load_model": "modeldebug.onnx._common",
    "analyze_model": "modeldebug.onnx.check",
    "compare_with_torch": "modeldebug.onnx.compare",
    "find_nonfinite": "modeldebug.onnx.nan",
    "profile_execution": "modeldebug.onnx.profile",
}


__getattr__, __dir__ = lazy_exports("modeldebug.onnx", _LAZY, globals())


__all__ = ["analyze_model", "compare_with_torch", "find_nonfinite", "load_model", "profile_execution"]
