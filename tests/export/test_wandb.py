"""`wandb[:DIR]`: an offline run, read back with wandb's own reader of its run files
(`wandb leet inspect --json`, which reads the .wandb transaction log through wandb-core)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modeldebug.export import export_report
from modeldebug.types import Report
from readback import expected_layer, expected_series, expected_validation, severity_counts

pytest.importorskip("wandb")


def _inspect(run_dir, *options):
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *options, str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _records(run_dir):
    return [json.loads(line) for line in _inspect(run_dir).splitlines() if line.strip()]


def _history(records, key):
    # float(): wandb's reader prints a whole-valued float as an integer (2.07e17 as 207787442583896060)
    return [(r["history"]["step"].get("num", 0), float(r["history"]["item"][key])) for r in records
            if r["type"] == "history" and key in r["history"]["item"]]


@pytest.fixture
def no_network(monkeypatch):
    """The user's environment asks for an online run at a server that cannot be reached: the export
    stays offline whatever the environment says."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)


def test_history_summary_and_files_are_what_the_report_says(broken_report, tmp_path, no_network):
    result = export_report(broken_report, f"wandb:{tmp_path}")
    assert result.ok, result.note
    run_dir = Path(result.location)
    assert run_dir.parent == tmp_path / "wandb" and run_dir.name.startswith("offline-run-")
    records = _records(run_dir)
    for column in ("loss", "grad_norm", "lr"):
        assert _history(records, f"modeldebug/train/{column}") == expected_series(broken_report, column)
    assert _history(records, "modeldebug/val/loss") == expected_validation(broken_report)
    name, points = expected_layer(broken_report, "zero_frac")
    assert _history(records, f"modeldebug/layer/{name}/zero_frac") == points

    summary = json.loads(_inspect(run_dir, "--summary"))
    assert summary["name"] == broken_report.run.id and summary["state"] == "finished"
    assert summary["exit_code"] == 0
    for severity, n in severity_counts(broken_report).items():
        assert summary["summary"][f"modeldebug/findings/{severity}"] == n
    listed = summary["summary"]["modeldebug/finding_list"]
    assert [(f["kind"], f["severity"], f["message"]) for f in listed] == [
        (f.kind, f.severity, f.message) for f in broken_report.sorted_findings()]
    assert "modeldebug:high" in summary["tags"]
    assert {f"modeldebug:{f.kind}" for f in broken_report.findings} <= set(summary["tags"])
    for f in broken_report.findings:
        assert f.message in summary["notes"]
    assert summary["config"]["modeldebug.run_id"] == broken_report.run.id
    saved = run_dir / "files" / "modeldebug-report.json"
    assert Report.from_json(saved.read_text()) == broken_report
    assert any(f["path"] == "modeldebug-report.json" for r in records if r["type"] == "files"
               for f in r["files"]["files"])


def test_a_healthy_run_and_a_crashed_one(healthy_report, tmp_path, no_network):
    crashed = healthy_report.model_copy(deep=True)
    crashed.run.status, crashed.run.exit_code = "crashed", 1
    healthy_dir = Path(export_report(healthy_report, f"wandb:{tmp_path / 'a'}").location)
    crashed_dir = Path(export_report(crashed, f"wandb:{tmp_path / 'b'}").location)
    healthy, failed = (json.loads(_inspect(d, "--summary")) for d in (healthy_dir, crashed_dir))
    assert healthy["exit_code"] == 0 and failed["exit_code"] == 1
    assert healthy["summary"]["modeldebug/findings/total"] == 0
    assert healthy["tags"] == ["modeldebug:none"] and healthy["notes"].startswith("No findings")


def test_a_run_the_user_has_open_is_left_as_it_is(healthy_report, tmp_path, no_network):
    """A callback's export while the script's own wandb run is open: that run stays the current one
    and goes on logging."""
    import wandb

    own = wandb.init(dir=str(tmp_path / "own"), project="mine", settings=wandb.Settings(mode="offline", silent=True))
    try:
        own.log({"acc": 0.5}, step=0)
        assert export_report(healthy_report, f"wandb:{tmp_path / 'md'}").ok
        assert wandb.run is own
        own.log({"acc": 0.7}, step=1)
    finally:
        own.finish()
    own_dir = next((tmp_path / "own" / "wandb").glob("offline-run-*"))
    assert _history(_records(own_dir), "acc") == [(0, 0.5), (1, 0.7)]
