"""MLflow: one run per report, through MLflow's own client, in the experiment ``MLFLOW_EXPERIMENT_NAME``
(MLflow's setting) or ``modeldebug``.

Metrics with their steps, the run's facts as parameters, the findings as tags
(``modeldebug.finding.<id>``: severity and message; ``modeldebug.worst_severity``) and as the
artifacts ``modeldebug/findings.md`` and ``modeldebug/report.json`` (the whole report). The run
ends FINISHED, FAILED (the script crashed) or KILLED (interrupted, terminated).

A directory or ``file:`` URI is MLflow's local file store, which mlflow-skinny reads and writes.
MLflow 3 keeps that store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE``
is set; the user asked for it by naming it, so it is allowed while this export runs and the
variable is put back as it was. Any other URI (a server, ``sqlite:``) is passed to MLflow as it is.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from modeldebug.errors import require
from modeldebug.export.content import ExportContent, finding_line

EXPERIMENT = "modeldebug"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
# MLflow's limits (param values 6000 characters, tag values 8000): longer text is cut.
_PARAM_CHARS = 6000
_TAG_CHARS = 8000
_STATUS = {"completed": "FINISHED", "crashed": "FAILED", "interrupted": "KILLED", "terminated": "KILLED"}
_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
_env_lock = threading.Lock()


def tracking_uri(location: str) -> str:
    """``location`` as a tracking URI: a plain path becomes a ``file:`` URI."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", location):  # has a scheme (not a one-letter drive)
        return location
    return Path(location).absolute().as_uri()


def key(name: str) -> str:
    """A metric, parameter or tag name MLflow accepts (letters, digits, ``_-./ :``)."""
    return re.sub(r"[^\w\-./ :]", "_", name)


def write(content: ExportContent, location: str) -> str:
    """Log ``content`` as a new MLflow run; ``<uri> run <run id>``."""
    require("mlflow", "mlflow")
    uri = tracking_uri(location)
    with _file_store_allowed(uri.startswith("file:")):
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        tags = {"modeldebug.run_id": content.run_id, "modeldebug.status": content.status,
                "modeldebug.worst_severity": content.worst_severity,
                "modeldebug.findings": ", ".join(f"{r['severity']}:{r['kind']}" for r in content.findings
                                                 if not r["suppressed"]) or "none"}
        tags.update({key(f"modeldebug.finding.{r['id']}"): finding_line(r)[:_TAG_CHARS] for r in content.findings})
        run = client.create_run(experiment_id, run_name=content.run_id, tags=tags)
        run_id = run.info.run_id
        try:
            params = [Param(key(f"modeldebug.{k}"), str(v)[:_PARAM_CHARS]) for k, v in content.info.items()]
            stamp = int(run.info.start_time or 0)
            metrics = [Metric(key(s.tag), s.value, stamp, s.step) for s in content.scalars]
            metrics += [Metric(key(tag), value, stamp, content.last_step) for tag, value in content.final.items()]
            client.log_batch(run_id, params=params)
            for i in range(0, len(metrics), _BATCH):
                client.log_batch(run_id, metrics=metrics[i : i + _BATCH])
            client.set_tag(run_id, "mlflow.note.content", content.findings_text[:_TAG_CHARS])  # the run's description
            client.log_text(run_id, content.findings_text, "modeldebug/findings.md")
            client.log_text(run_id, content.report_json, "modeldebug/report.json")
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status=_STATUS.get(content.status, "FINISHED"))
    return f"{uri} run {run_id}"


@contextmanager
def _file_store_allowed(allow: bool):
    if not allow or os.environ.get(_ALLOW_FILE_STORE) is not None:
        yield  # the user's own setting stands
        return
    with _env_lock:
        os.environ[_ALLOW_FILE_STORE] = "true"
        try:
            yield
        finally:
            os.environ.pop(_ALLOW_FILE_STORE, None)
