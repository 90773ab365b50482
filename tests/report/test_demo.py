"""The bundled demo (`make demo`: a classifier that never calls zero_grad) tells one story: the
missing zero_grad is the root of everything it reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modeldebug.types import Report

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_names_the_missing_zero_grad_as_the_root_of_everything(tmp_path):
    out = tmp_path / "demo-report.json"
    subprocess.run(
        [sys.executable, "-m", "modeldebug", "run", "--store", str(tmp_path / "runs.db"), "--json", str(out), "--",
         sys.executable, str(ROOT / "examples" / "forgot_zero_grad.py")],
        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
        check=True)
    report = Report.from_json(out.read_text())
    assert len(report.findings) >= 2
    (story,) = report.stories()
    assert story.root.kind == "gradient_accumulation"
    for f in story.findings:
        assert f.causes[0] == "missing_zero_grad", (f.kind, f.causes)
    for f in report.findings:
        assert "hand-written" not in f.message, f.message  # the NaN comes from the blown-up weights
