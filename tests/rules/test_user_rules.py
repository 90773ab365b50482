"""A team's own rules: a rule file, a rule shipped as an installed package (entry point), and
md.watch(rules=...); each fires on a stored run and on a live one; a rule that raises is a rule error."""

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
from modeldebug.rules import RuleLoadError, load_rule_file
from modeldebug.rules.user import forget_installed_rules
from modeldebug.store import RunStore
from modeldebug.types import Report

ROOT = Path(__file__).resolve().parents[2]

# What a team writes: the loss must fall below a ceiling once training is under way.
CEILING_RULE = '''
from dataclasses import dataclass

import numpy as np

from modeldebug.rules import Rule
from modeldebug.rules.base import col, g


@dataclass
class LossCeiling(Rule):
    id = "loss_ceiling"
    kind = "custom.loss_ceiling"
    reads = ("steps.loss",)

    ceiling: float = 0.01
    after_step: int = 10

    def check(self, ev):
        step, loss = col(ev.steps, "step"), col(ev.steps, "loss")
        late = loss[(step >= self.after_step) & np.isfinite(loss)]
        if len(late) == 0 or np.median(late) <= self.ceiling:
            return []
        return [self.finding(severity="high", confidence=0.9, step=int(self.after_step),
                             message=f"loss {g(np.median(late))} after step {self.after_step}, over our ceiling {g(self.ceiling)}",
                             evidence={"median_loss": float(np.median(late)), "ceiling": self.ceiling})]
'''

BROKEN_RULE = '''
from dataclasses import dataclass
from modeldebug.rules import Rule


@dataclass
class Fragile(Rule):
    id = "fragile"
    kind = "custom.fragile"
    reads = ("steps.loss",)

    def check(self, ev):
        return [self.finding(severity="low", message="x", confidence=1.0, evidence={"first": ev.steps.loss[10_000]})]
'''

TRAIN = '''
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
X = torch.randn(256, 6); y = (X[:, 0] > 0).long()
for i in range(30):
    idx = torch.randint(0, 256, (32,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
    opt.step()
'''


def monkeypatch_context():
    return pytest.MonkeyPatch.context()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def train(store: Path, rules=()) -> md.Debugger:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    X = torch.randn(256, 6)
    y = (X[:, 0] > 0).long()
    with md.watch(model, opt, config=md.DebuggingConfig(every=5), store=str(store), rules=rules) as dbg:
        for _ in range(30):
            idx = torch.randint(0, 256, (32,))
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return dbg


def cli(*args: str, cwd: Path | None = None):
    from modeldebug.cli import app

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)


@pytest.fixture
def rule_file(tmp_path) -> Path:
    return write(tmp_path / "our_rules.py", CEILING_RULE)


def test_a_rule_file_fires_on_a_stored_run(tmp_path, rule_file):
    dbg = train(tmp_path / "runs.db")
    assert not [f for f in dbg.report().findings if f.kind.startswith("custom.")]
    dbg.store.close()
    out = tmp_path / "r.json"
    result = cli("report", dbg.run_id, "--store", str(tmp_path / "runs.db"), "--rules", str(rule_file), "--json", str(out))
    assert result.exit_code == 0, result.output
    report = Report.from_json(out.read_text())
    (mine,) = [f for f in report.findings if f.kind == "custom.loss_ceiling"]
    assert mine.severity == "high" and mine.evidence["ceiling"] == 0.01
    assert "loss_ceiling" in result.output and "over our ceiling" in result.output
    # re-diagnosed with today's rules and kept: a later plain `report` shows it too
    again = cli("report", dbg.run_id, "--store", str(tmp_path / "runs.db"), "--json", "-")
    assert "custom.loss_ceiling" in again.stdout


def test_watch_takes_rules_and_thresholds_are_dataclass_fields(tmp_path, rule_file):
    (LossCeiling,) = load_rule_file(rule_file)
    dbg = train(tmp_path / "runs.db", rules=[LossCeiling])
    assert [f.kind for f in dbg.report().findings].count("custom.loss_ceiling") == 1
    dbg = train(tmp_path / "runs.db", rules=[LossCeiling(ceiling=100.0)])  # a loose ceiling: holds
    assert "custom.loss_ceiling" not in [f.kind for f in dbg.report().findings]


def test_modeldebug_run_with_a_rule_file(tmp_path, rule_file):
    script = write(tmp_path / "train.py", TRAIN)
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "modeldebug", "run", "--store", str(tmp_path / "runs.db"), "--rules", str(rule_file),
         "--json", str(out), "--fail-on", "high", "--", sys.executable, str(script)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # our own rule's high finding fails the CI job
    report = json.loads(out.read_text())
    assert [f["kind"] for f in report["findings"]].count("custom.loss_ceiling") == 1


def test_a_rule_that_raises_is_a_rule_error_in_the_report(tmp_path):
    broken = write(tmp_path / "fragile.py", BROKEN_RULE)
    dbg = train(tmp_path / "runs.db", rules=load_rule_file(broken))
    report = dbg.report()
    (err,) = report.rule_errors
    assert err.rule == "fragile" and err.error == "IndexError" and "10000" in err.message
    assert err.source == str(broken)
    assert report.to_dict()["rule_errors"][0]["rule"] == "fragile"
    assert "rule_errors" not in train(tmp_path / "runs.db").report().to_dict()  # written only when there are some
    result = cli("report", dbg.run_id, "--store", str(tmp_path / "runs.db"))
    assert "rule fragile failed" in result.output and "IndexError" in result.output


@pytest.mark.parametrize("text, says", [
    ("def broken(:\n", "SyntaxError at line 1"),
    ("import no_such_module_here\n", "ModuleNotFoundError at line 1"),
    ("x = 1\n", "defines no rule"),
    ("from modeldebug.rules import Rule\nclass R(Rule):\n    id = 'r'\n    kind = 'loss_too_high'\n    def check(self, ev): return []\n",
     "custom.loss_too_high"),
])
def test_a_rule_file_that_cannot_be_used_is_refused_with_its_reason(tmp_path, text, says):
    bad = write(tmp_path / "bad_rules.py", text)
    with pytest.raises(RuleLoadError, match=says.replace("(", r"\(")):
        load_rule_file(bad)
    script = write(tmp_path / "train.py", "raise SystemExit('must not run')\n")
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", str(tmp_path / "runs.db"), "--rules",
                           str(bad), "--", sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr and "must not run" not in proc.stderr
    assert not (tmp_path / "runs.db").exists()  # refused before anything ran


@pytest.fixture
def installed_package(tmp_path, monkeypatch):
    """A package on the path that declares a rule in the `modeldebug.rules` entry-point group, as
    `pip install our-rules` would leave it, and one whose entry point cannot load."""
    site = tmp_path / "site"
    (site / "our_rules_pkg").mkdir(parents=True)
    write(site / "our_rules_pkg" / "__init__.py", CEILING_RULE)
    info = site / "our_rules_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: our-rules-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[modeldebug.rules]\nceiling = our_rules_pkg:LossCeiling\ngone = our_rules_pkg_missing:Rule\n")
    monkeypatch.syspath_prepend(str(site))
    forget_installed_rules()
    yield site
    forget_installed_rules()


def test_an_installed_rule_fires_and_a_broken_entry_point_is_a_rule_error(tmp_path, installed_package):
    dbg = train(tmp_path / "runs.db")
    report = dbg.report()
    assert [f.kind for f in report.findings].count("custom.loss_ceiling") == 1
    (err,) = report.rule_errors
    assert err.rule == "gone" and err.error == "ModuleNotFoundError" and "entry point gone" in err.source
    # on a stored run made before the package was there (diagnosed again with today's rules)
    forget_installed_rules()
    with monkeypatch_context() as mp:
        mp.setattr("modeldebug.rules.user.entry_point_rules", lambda: ([], []))
        before = train(tmp_path / "runs.db")
        assert "custom.loss_ceiling" not in [f.kind for f in before.report().findings]
    forget_installed_rules()
    before.store.close()
    again = cli("report", before.run_id, "--store", str(tmp_path / "runs.db"), "--reanalyze", "--json", "-")
    assert [f["kind"] for f in json.loads(again.stdout)["findings"]].count("custom.loss_ceiling") == 1
    # in a `modeldebug run` too (the package is on the path of the process that diagnoses)
    script = write(tmp_path / "train.py", TRAIN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(installed_package), str(ROOT / "src")])}
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", str(tmp_path / "runs2.db"), "--json", "-",
                           "--", sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [f["kind"] for f in report["findings"]].count("custom.loss_ceiling") == 1
    assert [e["rule"] for e in report["rule_errors"]] == ["gone"]


def test_the_worked_example_of_docs_rules_md_runs_as_written(tmp_path):
    import re

    text = (ROOT / "docs" / "rules.md").read_text()
    rule_code, test_code = re.findall(r"```python\n(.*?)```", text, re.S)[:2]
    write(tmp_path / "our_rules.py", rule_code)
    write(tmp_path / "test_our_rules.py", test_code)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_our_rules.py"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr
    assert [cls.id for cls in load_rule_file(tmp_path / "our_rules.py")] == ["loss_ceiling"]
