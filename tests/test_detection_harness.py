"""The fault-suite harness (benchmarks/detection.py) on a busy machine: each script has its own limit,
scaled to the machine's speed and retried once; a script that hangs is killed with its children and
costs only its own result (before, one 300 s pytest timeout spanned all ~90 scripts: 43 errors)."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import detection  # noqa: E402


def _running(pid: int, wait_s: float = 10.0) -> bool:
    """Whether the process still runs after `wait_s` (a zombie init has not reaped yet does not)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


def _script(tmp_path: Path, name: str, body: str) -> detection.Case:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return detection.Case(path, "none", "none")


@pytest.mark.slow
def test_a_hung_script_is_killed_retried_once_and_costs_only_its_own_result(tmp_path, monkeypatch):
    monkeypatch.setattr(detection, "SCRIPT_BUDGET_S", 8.0)  # times the machine's slowdown
    pids = tmp_path / "pids"
    hung = _script(tmp_path, "hung", f"""
        import os, time
        with open({str(pids)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        time.sleep(600)
    """)
    # Hangs on its first run only, as a script starved by the machine would.
    marker = tmp_path / "ran_once"
    flaky = _script(tmp_path, "flaky", f"""
        import os, time
        if not os.path.exists({str(marker)!r}):
            open({str(marker)!r}, "w").close()
            time.sleep(600)
    """)
    quick = _script(tmp_path, "quick", "print('done')\n")
    with detection.Runner([hung, flaky, quick], jobs=2, workdir=tmp_path) as runner:
        ok = runner.result(quick)
        assert ok.report_written and ok.exit_code == 0, ok.error
        again = runner.result(flaky)
        assert again.report_written and again.exit_code == 0, again.error
        lost = runner.result(hung)
    assert not lost.report_written and "timed out twice" in lost.error
    assert not [pid for pid in map(int, pids.read_text().split()) if _running(pid)]  # killed with `modeldebug run`


def test_the_limit_grows_with_the_machine_s_slowdown(monkeypatch):
    monkeypatch.setattr(detection, "calibration_job", lambda: 3 * detection.CALIBRATION_S)
    assert detection.slowdown() == pytest.approx(3.0)
    monkeypatch.setattr(detection, "calibration_job", lambda: 0.5 * detection.CALIBRATION_S)
    assert detection.slowdown() == 1.0
    monkeypatch.setattr(detection, "calibration_job", lambda: 100 * detection.CALIBRATION_S)
    assert detection.slowdown() == detection.MAX_SLOWDOWN
