"""The runtime_error rule on stored events, and `modeldebug explain FILE`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import pytest

from diagnose_scenarios import SCENARIOS, raise_scenario
from modeldebug.diagnose import diagnose_exception
from modeldebug.evidence import Evidence
from modeldebug.rules import registry, run_rules
from modeldebug.rules.runtime_error import RuntimeErrorRule
from modeldebug.types import Report


def _crash(sid):
    s = next(s for s in SCENARIOS if s.id == sid)
    return raise_scenario(s)


def test_rule_is_registered():
    assert registry()["runtime_error"] is RuntimeErrorRule


def test_rule_emits_the_finding_diagnosed_in_process():
    exc, names = _crash("linear_after_flatten")
    stored = diagnose_exception(exc, module_names=names, step=12).model_dump(mode="json")
    events = [{"step": 12, "type": "exception", "data": {"type": "RuntimeError", "message": str(exc)}},
              {"step": 12, "type": "runtime_error", "data": json.dumps(stored)}]  # the store may keep JSON text
    findings = run_rules(Evidence.build(events=events), [RuntimeErrorRule])
    assert len(findings) == 1
    f = findings[0]
    assert f.location == "classifier.0" and f.step == 12 and f.evidence["cause"] == "shape_mismatch"
    assert f.evidence["inputs"][0]["shape"] == [4, 2048]


def test_rule_falls_back_to_the_traceback_text():
    exc, _ = _crash("conv_grayscale_input")
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    events = [{"step": 3, "type": "traceback", "data": {"text": text}},
              {"step": 3, "type": "exception", "data": {"type": "RuntimeError", "message": str(exc)}}]
    (f,) = RuntimeErrorRule().check(Evidence.build(events=events))
    assert f.evidence["cause"] == "shape_mismatch" and f.evidence["module_type"] == "Conv2d"
    assert f.step == 3 and any("nn.Conv2d(1, 16, kernel_size=3)" == r.implementation for r in f.recommendations)


def test_rule_falls_back_to_the_exception_message():
    events = [{"step": 5, "type": "exception", "data": {"type": "RuntimeError",
                                                       "message": "mat1 and mat2 must have the same dtype, but got Double and Float"}}]
    (f,) = RuntimeErrorRule().check(Evidence.build(events=events))
    assert f.evidence["cause"] == "dtype_mismatch" and f.step == 5
    assert any(".float()" in (r.implementation or "") for r in f.recommendations)


def test_rule_is_quiet_without_a_crash():
    assert RuntimeErrorRule().check(Evidence.build(events=[{"step": 1, "type": "nan_origin", "data": {}}])) == []
    assert RuntimeErrorRule().check(Evidence.build()) == []


def _cli(*args, stdin=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "modeldebug", "explain", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_explain_file(tmp_path):
    exc, _ = _crash("embedding_index_too_large")
    tb = tmp_path / "traceback.txt"
    tb.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    out = tmp_path / "out" / "explain.json"
    r = _cli(str(tb), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "runtime_error" in r.stdout and "self.embed" in r.stdout
    rep = Report.from_json(out.read_text())
    (f,) = rep.findings
    assert f.kind == "runtime_error" and f.evidence["cause"] == "other" and f.evidence["module_type"] == "Embedding"


def test_cli_explain_stdin():
    r = _cli("-", stdin="RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x2048 and 512x10)\n")
    assert r.returncode == 0, r.stderr
    assert "nn.Linear(2048, 10)" in r.stdout


def test_cli_explain_missing_file(tmp_path):
    r = _cli(str(tmp_path / "nope.txt"))
    assert r.returncode == 2
    assert "No traceback file" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2


@pytest.mark.slow
def test_modeldebug_run_reports_the_crash(tmp_path):
    """End to end: a script that crashes under `modeldebug run` gets a runtime_error finding (from the
    traceback event until the collector stores the in-process diagnosis)."""
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "train_small.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", STEPS="20", CRASH_AT="6")
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--", sys.executable, str(script)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1
    rep = Report.from_json((tmp_path / "r.json").read_text())
    (f,) = [f for f in rep.findings if f.kind == "runtime_error"]
    assert f.severity == "high" and f.evidence["cause"] == "shape_mismatch"
    assert f.evidence["module_type"] == "Linear" or f.location  # the layer, by name in-process or by type from text
    assert any("nn.Linear(9," in (r.implementation or "") for r in f.recommendations), f.recommendations
