"""`--export` on `modeldebug run` and `modeldebug report`: written after the report, read back
with each platform's reader; a failed export is a note, a bad target stops the command first."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeldebug.types import Report

SCRIPT = str(Path(__file__).parent.parent / "scripts" / "train_small.py")


def _modeldebug(*args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "modeldebug", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", STEPS="20", **env))


def _tensorboard_loss(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("modeldebug/train/loss")]


def _mlflow_runs(uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "modeldebug"]
    return client.search_runs([experiment.experiment_id])


def test_run_then_report_export_what_the_report_says(tmp_path, monkeypatch):
    import numpy as np

    proc = _modeldebug("run", "--json", "r.json", "--export", "tensorboard:tb", "--export", "mlflow:mlruns",
                       "--", sys.executable, SCRIPT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = Report.from_json((tmp_path / "r.json").read_text())
    assert "exported to tensorboard: tb" in proc.stderr and "exported to mlflow: file://" in proc.stderr
    series = report.metrics.series
    assert _tensorboard_loss(tmp_path / "tb") == [(int(s), float(np.float32(v))) for s, v in zip(series.step, series.loss)]
    (run,) = _mlflow_runs((tmp_path / "mlruns").as_uri(), monkeypatch)
    assert run.info.run_name == report.run.id and run.data.params["modeldebug.steps"] == "20"

    # the stored run, exported again later
    proc = _modeldebug("report", "latest", "--export", "wandb:wb", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    assert f"exported to wandb: {Path('wb') / 'wandb' / run_dir.name}" in proc.stderr
    read = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    summary = json.loads(read.stdout)
    assert summary["name"] == report.run.id
    assert summary["summary"]["modeldebug/run/steps"] == report.run.steps


def test_a_failed_export_keeps_the_report_and_the_exit_code(tmp_path, monkeypatch):
    (tmp_path / "tb").write_text("a file, not a log directory")
    proc = _modeldebug("run", "--json", "r.json", "--export", "tensorboard:tb", "--export", "mlflow:mlruns",
                       "--", sys.executable, SCRIPT, cwd=tmp_path, CRASH_AT="5")
    assert proc.returncode == 1, proc.stderr  # the script's own exit code
    assert "note: export to tensorboard:tb failed" in proc.stderr and "Traceback" not in proc.stderr.split("report")[-1]
    report = Report.from_json((tmp_path / "r.json").read_text())
    assert report.run.status == "crashed" and any(f.kind == "runtime_error" for f in report.findings)
    (run,) = _mlflow_runs((tmp_path / "mlruns").as_uri(), monkeypatch)  # the next target was still written
    assert run.info.status == "FAILED" and run.data.tags["modeldebug.worst_severity"] == "high"


@pytest.mark.parametrize("target, says", [("tensorbord:x", "did you mean tensorboard?"),
                                          ("tensorboard", "needs a log directory")])
def test_a_bad_target_stops_the_command_before_the_script_runs(tmp_path, target, says):
    proc = _modeldebug("run", "--export", target, "--", sys.executable, SCRIPT, cwd=tmp_path,
                       LOSSES_OUT=str(tmp_path / "losses.json"))
    assert proc.returncode == 2
    assert says in " ".join(proc.stderr.split())
    assert not (tmp_path / "losses.json").exists() and not (tmp_path / ".modeldebug").exists()


def test_a_missing_library_names_its_extra_before_the_script_runs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from modeldebug import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    ran = []
    monkeypatch.setattr("modeldebug.runner.run_script", lambda *a, **k: ran.append(a))
    result = CliRunner().invoke(cli.app, ["run", "--export", "mlflow:x", "--", sys.executable, SCRIPT])
    assert result.exit_code == 2 and not ran
    assert "pip install 'modeldebug[mlflow]'" in " ".join(result.output.split())


def test_export_read_without_typer_as_typer_reads_it(monkeypatch):
    from typer.testing import CliRunner

    from modeldebug import cli, cli_run

    argv = ["run", "--export", "tensorboard:runs/a", "--export=mlflow:file:///tmp/m", "--json", "r.json", "--",
            "python", "train.py", "--export", "x"]
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda command, **options: seen.update(command=command, **options))
    assert CliRunner().invoke(cli.app, argv).exit_code == 0
    command, options = cli_run.run_args(argv)
    assert {"command": command, **options} == seen
    assert options["export"] == ["tensorboard:runs/a", "mlflow:file:///tmp/m"] and command[-2:] == ["--export", "x"]


def test_checking_targets_imports_no_platform_library():
    """`modeldebug run` checks the targets before the script starts, while it is on the user's clock."""
    probe = ("import json, sys; from modeldebug.cli_run import export_targets; "
             "export_targets(['tensorboard:tb', 'mlflow:m', 'wandb']); "
             "print(json.dumps([m for m in ('tensorboard', 'mlflow', 'wandb', 'torch', 'numpy', 'pydantic') "
             "if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
