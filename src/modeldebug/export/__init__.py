"""A finished report on the monitoring platforms users already have.

    from modeldebug.export import export_report
    export_report(report, "tensorboard:runs/exp1")  # an event file beside the run's own
    export_report(report, "mlflow:./mlruns")        # MLflow's local file store, or any tracking URI
    export_report(report, "wandb:out")              # an offline Weights & Biases run under out/wandb

The same from the command line: ``modeldebug run --export TARGET -- python train.py`` (repeatable)
and ``modeldebug report RUN --export TARGET``. What goes where is in :mod:`.content`; each
platform's module imports its library when it is used (``pip install modeldebug[tensorboard]``,
``[mlflow]``, ``[wandb]``).

:func:`export_report` never raises: an export that fails comes back as an :class:`ExportResult`
with a one-line ``note``, and the report itself (JSON, HTML, the run store) is untouched. Callers
that take targets from the user check them first with :func:`check_targets` (a wrong name or a
missing library is an error before training, not a note after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from modeldebug.export.targets import ExportTarget, check_target, check_targets, parse_target

if TYPE_CHECKING:
    from modeldebug.types import Report

__all__ = ["ExportResult", "ExportTarget", "check_target", "check_targets", "export_all", "export_report",
           "parse_target"]

_WRITERS = {
    "tensorboard": "modeldebug.export.to_tensorboard",
    "mlflow": "modeldebug.export.to_mlflow",
    "wandb": "modeldebug.export.to_wandb",
}


@dataclass
class ExportResult:
    target: str  # as given
    ok: bool
    location: str | None = None  # what was written: the event file, the MLflow run, the wandb run directory
    note: str | None = None  # one line, when it was not written

    def __str__(self) -> str:
        return f"exported to {self.location}" if self.ok else f"export to {self.target} failed: {self.note}"


def export_report(report: Report, target: ExportTarget | str) -> ExportResult:
    """Write ``report``'s findings and summary metrics to ``target`` (``tensorboard:DIR``,
    ``mlflow[:URI]``, ``wandb[:DIR]``); never raises for what goes wrong (see ``ExportResult.note``)."""
    try:
        checked = check_target(target)
    except (ValueError, ImportError) as exc:
        return ExportResult(target=str(target), ok=False, note=str(exc))
    try:
        import importlib

        from modeldebug.export.content import build

        writer = importlib.import_module(_WRITERS[checked.kind])
        location = writer.write(build(report), checked.location)
    except Exception as exc:  # noqa: BLE001 - an export must never cost the caller its report
        return ExportResult(target=checked.text, ok=False, note=_one_line(exc))
    return ExportResult(target=checked.text, ok=True, location=location)


def export_all(report: Report, targets: Iterable[ExportTarget | str] | None) -> list[ExportResult]:
    """:func:`export_report` for each target, in order."""
    return [export_report(report, t) for t in targets or ()]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:300]}"
