"""The ONNX debugger: check, profile, find the first non-finite value, compare with PyTorch.

Every function returns a ``modeldebug.Report``. onnx and onnxruntime are imported when a function
runs, so ``import modeldebug.onnx`` works without the ``onnx`` extra. The functions themselves
are loaded on first use: the main CLI mounts ``modeldebug.onnx.cli`` on every start, and
`modeldebug run` should not pay for numpy and the report models through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modeldebug.onnx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["analyze_model", "compare_with_torch", "find_nonfinite", "load_model", "profile_execution"]
