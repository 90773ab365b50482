"""A project's settings ([tool.modeldebug] in pyproject.toml, or modeldebug.toml): precedence,
errors that name the key, rule settings, suppressions and baselines, through the real commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import modeldebug as md
from modeldebug.project_config import ConfigError, resolve
from modeldebug.types import Report

# Trains without zero_grad: the built-in rules report gradient_accumulation (medium).
NO_ZERO_GRAD = '''
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
X = torch.randn(256, 6); y = (X[:, 0] > 0).long()
for i in range(40):
    idx = torch.randint(0, 256, (32,))
    nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
    opt.step()
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def cli(cwd: Path, *args: str):
    from modeldebug.cli import app

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)


def run(cwd: Path, *options: str, script: str = NO_ZERO_GRAD) -> tuple[subprocess.CompletedProcess, dict | None]:
    path = write(cwd / "train.py", script)
    out = cwd / "report.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", *options, "--json", str(out), "--",
                           sys.executable, str(path)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, json.loads(out.read_text()) if out.exists() else None


def no_zero_grad_run(store: Path) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    X = torch.randn(256, 6)
    y = (X[:, 0] > 0).long()
    with md.watch(model, opt, config=md.DebuggingConfig(every=5), store=str(store)) as dbg:
        for _ in range(40):
            idx = torch.randint(0, 256, (32,))
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    dbg.report()
    dbg.store.close()
    return dbg.run_id


def test_defaults_then_the_file_then_the_command_line(tmp_path):
    assert resolve({}, start=tmp_path / "nowhere", use_file=False)["level"] == "detailed"
    write(tmp_path / "pyproject.toml", """
        [project]
        name = "ours"
        [tool.modeldebug]
        level = "basic"
        fail-on = "medium"
        store = "runs/md.db"
    """)
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    s = resolve({}, start=sub)  # found from a subdirectory, as a project's tools are
    assert (s["level"], s.source("level")) == ("basic", str(tmp_path / "pyproject.toml"))
    assert s["store"] == str(tmp_path / "runs" / "md.db")  # relative to the file, not to where it runs
    assert (s["every"], s.source("every")) == (None, "default")
    s = resolve({"level": "comprehensive", "fail-on": None}, start=sub)
    assert (s["level"], s.source("level")) == ("comprehensive", "command line")
    assert s["fail-on"] == "medium"  # not given on the command line: the file's
    # modeldebug.toml in the same directory comes first; its keys are top-level
    write(tmp_path / "modeldebug.toml", 'level = "comprehensive"\n')
    assert resolve({}, start=sub)["level"] == "comprehensive"
    result = cli(sub, "config", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["file"] == str(tmp_path / "modeldebug.toml")
    assert shown["settings"]["level"] == {"value": "comprehensive", "source": str(tmp_path / "modeldebug.toml")}
    assert shown["settings"]["fail-on"]["source"] == "default"
    table = cli(sub, "config")
    assert "modeldebug.toml" in table.output and "level" in table.output


def test_a_pyproject_without_our_table_is_passed_over(tmp_path):
    write(tmp_path / "pyproject.toml", 'level = "basic"\n')  # no [tool.modeldebug]: not ours
    inner = tmp_path / "inner"
    write(inner / "pyproject.toml", '[project]\nname = "x"\n')
    assert resolve({}, start=inner)["level"] == "detailed"


@pytest.mark.parametrize("text, says", [
    ('[tool.modeldebug]\nlevle = "basic"\n', "Unknown key 'levle'"),
    ('[tool.modeldebug]\nfail-on = "severe"\n', "fail-on: Input should be 'high', 'medium' or 'low'"),
    ('[tool.modeldebug]\ndisable = ["dead_relus"]\n', "disable: no rule 'dead_relus'"),
    ('[tool.modeldebug.thresholds.gradient_accumulation]\nmin_corelation = 0.9\n',
     "rule 'gradient_accumulation' has no threshold 'min_corelation'; its thresholds: stale_fraction"),
    ('[tool.modeldebug.severity]\nnot_a_kind = "low"\n', "neither a rule id nor a finding kind"),
    ('[tool.modeldebug\nlevel = 1\n', "is not valid TOML"),
])
def test_a_bad_file_is_refused_before_the_script_runs_and_names_the_key(tmp_path, text, says):
    write(tmp_path / "pyproject.toml", text)
    proc, report = run(tmp_path, script="raise SystemExit('must not run')\n")
    assert proc.returncode == 2, proc.stderr
    assert says in " ".join(proc.stderr.split()) and "must not run" not in proc.stderr
    assert report is None
    if "Unknown key" in says:
        assert "valid keys: level, sampling-budget, live-budget, every, fail-on, store, rules, disable, severity" in proc.stderr
    assert cli(tmp_path, "config").exit_code == 2


def test_rule_settings_apply_when_a_stored_run_is_diagnosed_again(tmp_path):
    run_id = no_zero_grad_run(tmp_path / "runs.db")
    args = ("report", run_id, "--store", str(tmp_path / "runs.db"), "--reanalyze", "--json", "-")
    kinds = lambda result: {f["kind"]: f["severity"] for f in json.loads(result.stdout)["findings"]}  # noqa: E731
    assert kinds(cli(tmp_path, *args))["gradient_accumulation"] == "medium"
    write(tmp_path / "modeldebug.toml", '[severity]\ngradient_accumulation = "high"\n')
    assert kinds(cli(tmp_path, *args))["gradient_accumulation"] == "high"
    write(tmp_path / "modeldebug.toml", '[thresholds.gradient_accumulation]\nstale-fraction = 1.5\n')  # more than every step
    assert "gradient_accumulation" not in kinds(cli(tmp_path, *args))
    write(tmp_path / "modeldebug.toml", 'disable = ["gradient_accumulation"]\n')
    assert "gradient_accumulation" not in kinds(cli(tmp_path, *args))


def test_a_suppressed_finding_is_kept_with_its_reason_and_not_counted_by_fail_on(tmp_path):
    proc, report = run(tmp_path, "--fail-on", "medium", "--store", str(tmp_path / "runs.db"))
    assert proc.returncode == 1, proc.stderr  # the finding fails the CI job
    write(tmp_path / "pyproject.toml", """
        [tool.modeldebug]
        fail-on = "medium"
        [[tool.modeldebug.suppress]]
        kind = "gradient_accumulation"
        reason = "we accumulate over the whole run on purpose"
    """)
    proc, report = run(tmp_path, "--store", str(tmp_path / "runs.db"))
    assert proc.returncode == 0, proc.stderr  # fail-on from the file; the only finding is expected
    (f,) = [f for f in report["findings"] if f["kind"] == "gradient_accumulation"]
    assert f["suppressed"] is True and f["suppression_reason"] == "we accumulate over the whole run on purpose"
    assert "suppressed: medium gradient_accumulation" in proc.stderr
    Report.model_validate(report)  # the contract's schema holds the new fields


def test_a_suppression_matches_kind_and_location_glob(tmp_path):
    from modeldebug.project_schema import Suppression

    s = Suppression(kind="unchanged_weights", location="encoder.*", reason="frozen on purpose")
    assert s.matches("unchanged_weights", "encoder.0.weight")
    assert not s.matches("unchanged_weights", "head.weight")
    assert not s.matches("dead_relu", "encoder.0")
    assert Suppression(kind="dead_relu", reason="r").matches("dead_relu", None)


def test_baseline_reports_only_what_is_new(tmp_path):
    store = str(tmp_path / "runs.db")
    first, report = run(tmp_path, "--store", store)
    assert [f["kind"] for f in report["findings"]] == ["gradient_accumulation"]
    proc, report = run(tmp_path, "--store", store, "--baseline", "latest", "--fail-on", "medium")
    assert proc.returncode == 0, proc.stderr  # nothing new
    (f,) = report["findings"]
    assert f["suppressed"] and f["suppression_reason"].startswith("already in the baseline run ")
    # a stored run compared with another through `report --baseline`: the healthy run had none of it
    healthy = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", store, "--", sys.executable, "-c",
                              "print('nothing trained')"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert healthy.returncode == 0
    runs = json.loads(cli(tmp_path, "report", report["run"]["id"], "--store", store, "--json", "-").stdout)
    assert runs["findings"][0]["kind"] == "gradient_accumulation"
    from modeldebug.store import RunStore

    with RunStore(store, read_only=True) as s:
        newest = s.list_runs(limit=1)[0].id
    out = json.loads(cli(tmp_path, "report", report["run"]["id"], "--store", store, "--baseline", newest, "--json", "-").stdout)
    assert not out["findings"][0].get("suppressed")
    bad = cli(tmp_path, "report", "latest", "--store", store, "--baseline", "nosuchrun")
    assert bad.exit_code == 2 and "--baseline" in bad.output


def test_watch_reads_the_project_file(tmp_path, monkeypatch):
    write(tmp_path / "modeldebug.toml", 'level = "basic"\n[[suppress]]\nkind = "gradient_accumulation"\nreason = "known"\n')
    monkeypatch.chdir(tmp_path)
    run_id = no_zero_grad_run(tmp_path / "runs.db")
    from modeldebug.store import RunStore

    with RunStore(tmp_path / "runs.db", read_only=True) as s:
        report = s.load_report(run_id)
        assert s.load_evidence(run_id).config.analysis_level == "detailed"  # config= given: the file does not override it
    (f,) = [f for f in report.findings if f.kind == "gradient_accumulation"]
    assert f.suppressed and f.suppression_reason == "known"
    write(tmp_path / "modeldebug.toml", 'sampling-budget = 2\n')
    with pytest.raises(ConfigError, match="sampling-budget"):
        md.watch(nn.Linear(2, 2))
