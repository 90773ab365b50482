"""Export targets as the user writes them: ``tensorboard:DIR``, ``mlflow[:URI]``, ``wandb[:DIR]``.

Parsing and the check that the target's library is installed import nothing heavy (the library is
found with ``importlib.util.find_spec``, not imported), so `modeldebug run` can refuse a bad target
before the script starts: found after training, it would cost the user the run.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

# kind -> (the module it needs, the extra that installs it)
KINDS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
# What each exporter imports, so `modeldebug run` can import it while the script runs.
IMPORTS = {
    "tensorboard": ("tensorboard.summary.writer.event_file_writer", "tensorboard.compat.proto.summary_pb2"),
    "mlflow": ("mlflow.tracking", "mlflow.entities"),
    "wandb": ("wandb",),
}
FORMS = "tensorboard:DIR, mlflow:URI (or mlflow:DIR for a local file store) or wandb[:DIR]"


@dataclass(frozen=True)
class ExportTarget:
    kind: str  # tensorboard | mlflow | wandb
    location: str  # a directory (tensorboard, wandb) or a tracking URI (mlflow)
    text: str  # as the user wrote it

    def __str__(self) -> str:
        return self.text


def parse_target(text: str) -> ExportTarget:
    """The target ``text`` names; ValueError (saying what is expected) when it names none."""
    text = str(text).strip()
    kind, _, location = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"Unknown export target {text!r}{hint}: expected {FORMS}.")
    location = location.strip()
    if kind == "tensorboard" and not location:
        raise ValueError(f"{text!r}: TensorBoard needs a log directory, e.g. tensorboard:runs/exp1.")
    if kind == "mlflow" and not location:
        location = os.environ.get("MLFLOW_TRACKING_URI") or "./mlruns"  # MLflow's own setting, else a local store
    if kind == "wandb" and not location:
        location = "."  # wandb puts its offline runs under ./wandb
    return ExportTarget(kind=kind, location=location, text=text)


def check_target(target: ExportTarget | str) -> ExportTarget:
    """``target`` parsed, with its library installed; ValueError or MissingExtraError (naming the
    extra to install) otherwise."""
    from modeldebug.errors import MissingExtraError

    target = parse_target(target) if isinstance(target, str) else target
    module, extra = KINDS[target.kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module set to None in sys.modules
        found = False
    if not found:
        raise MissingExtraError(module, extra)
    return target


def check_targets(texts) -> list[ExportTarget]:
    """Every target of ``texts`` checked (:func:`check_target`); raises at the first bad one."""
    return [check_target(t) for t in texts or ()]
