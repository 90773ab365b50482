"""Errors raised by modeldebug itself (the user's own exceptions pass through untouched)."""

from __future__ import annotations

from typing import Any, Literal

ErrorType = Literal["analysis", "profiling", "monitoring"]


class DebuggingError(Exception):
    """A failure of the debugger, with the stage it happened in and details for the caller."""

    def __init__(self, message: str, type: ErrorType = "analysis", details: Any = None):
        super().__init__(message)
        self.type = type
        self.details = details


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is needed for this feature but is not installed: pip install 'modeldebug[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str):
    """Import an optional dependency or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra) from exc
