"""`modeldebug run` on unmodified scripts: steps, losses, status and the report, whatever happens."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modeldebug.store import RunStore
from modeldebug.types import Report

SCRIPT = str(Path(__file__).parent / "scripts" / "train_small.py")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _modeldebug(*args, cwd, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "modeldebug", *args], cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=240, **kw
    )



def _report(path) -> Report:
    import jsonschema

    data = json.loads(Path(path).read_text())
    jsonschema.validate(data, Report.json_schema())  # the published contract
    return Report.model_validate(data)


def test_watches_an_unmodified_script(tmp_path):
    losses_out = tmp_path / "losses.json"
    proc = _modeldebug(
        "run", "--json", "r.json", "--every", "5", "--", sys.executable, SCRIPT,
        cwd=tmp_path, env=_env(STEPS=20, LOSSES_OUT=losses_out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stderr  # the script's own output passes through
    rep = _report(tmp_path / "r.json")
    truth = json.loads(losses_out.read_text())
    assert rep.run.status == "completed" and rep.run.exit_code == 0 and rep.run.steps == 20
    assert [m.name for m in rep.run.models] == ["Sequential"]
    assert rep.run.monitor_overhead is not None and rep.run.monitor_overhead.time_fraction > 0
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        ev = store.load_evidence(rep.run.id)
    np.testing.assert_allclose(ev.steps.loss, truth["losses"], rtol=1e-6)
    np.testing.assert_allclose(ev.validation.loss, truth["val"], rtol=1e-6)
    assert list(ev.validation.step) == [8, 16, 20]
    assert np.isfinite(ev.steps.data_s[1:]).all()  # DataLoader wait, from the iterator
    assert {"0", "1", "2"} <= set(ev.layers) and ev.param("0.weight").changed.all()
    assert not [f for f in rep.findings if f.severity in ("high", "medium")]


def test_a_crashing_script_still_leaves_a_report(tmp_path):
    proc = _modeldebug("run", "--json", "r.json", "--", sys.executable, SCRIPT, cwd=tmp_path, env=_env(STEPS=20, CRASH_AT=6))
    assert proc.returncode == 1
    assert "mat1 and mat2 shapes cannot be multiplied" in proc.stderr  # the script's traceback is shown
    rep = _report(tmp_path / "r.json")
    assert rep.run.status == "crashed" and rep.run.exit_code == 1 and rep.run.steps == 6
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        events = store.load_evidence(rep.run.id).events
    kinds = {e["type"]: e["data"] for e in events}
    assert kinds["exception"]["type"] == "RuntimeError"
    assert "train_small.py" in kinds["traceback"]["text"]


def test_ctrl_c_leaves_an_interrupted_report(tmp_path):
    losses_out = tmp_path / "losses.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--", sys.executable, SCRIPT],
        cwd=tmp_path, env=_env(STEPS=100000, SLEEP=0.01, LOSSES_OUT=losses_out),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if losses_out.exists() and len(json.loads(losses_out.read_text() or '{"losses": []}')["losses"]) >= 10:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    rep = _report(tmp_path / "r.json")
    assert rep.run.status == "interrupted" and rep.run.steps >= 10


def test_a_killed_script_keeps_what_was_flushed(tmp_path):
    losses_out = tmp_path / "losses.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--", sys.executable, SCRIPT],
        cwd=tmp_path, env=_env(STEPS=100000, SLEEP=0.02, LOSSES_OUT=losses_out),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if losses_out.exists() and len(json.loads(losses_out.read_text() or '{"losses": []}')["losses"]) >= 80:
            break
        time.sleep(0.1)
    child = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(child[0]), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL
    rep = _report(tmp_path / "r.json")
    assert rep.run.status == "crashed" and rep.run.exit_code == -signal.SIGKILL
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        assert len(store.load_evidence(rep.run.id).steps) >= 20  # flushed at least once a second


def test_a_script_that_never_steps_is_counted_by_backward(tmp_path):
    proc = _modeldebug("run", "--json", "r.json", "--", sys.executable, SCRIPT, cwd=tmp_path, env=_env(STEPS=12, NO_STEP=1))
    assert proc.returncode == 0, proc.stderr
    rep = _report(tmp_path / "r.json")
    assert rep.run.steps == 12
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        steps = store.load_evidence(rep.run.id).steps
    assert not steps.optimizer_stepped.any() and np.isfinite(steps.loss).all()


def test_runs_report_and_schema_commands(tmp_path):
    assert _modeldebug("run", "--", sys.executable, SCRIPT, cwd=tmp_path, env=_env(STEPS=5)).returncode == 0
    listing = _modeldebug("runs", cwd=tmp_path)
    assert listing.returncode == 0 and "completed" in listing.stdout
    again = _modeldebug("report", "latest", "--json", "again.json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _report(tmp_path / "again.json").run.steps == 5
    schema = json.loads(_modeldebug("schema", cwd=tmp_path).stdout)
    assert schema["title"] == "Report" and "findings" in schema["properties"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--", "no-such-program-xyz"], "Cannot find the program"),
        (["run"], "Usage"),
        (["report", "nope"], "No run store"),
    ],
    ids=["unknown-program", "no-command", "no-store"],
)
def test_bad_input_gets_a_clear_error(tmp_path, args, message):
    proc = _modeldebug(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_live_status_line_on_a_terminal(tmp_path):
    """On a terminal the script's output passes through and a status line shows steps and loss."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeldebug", "run", "--", sys.executable, SCRIPT],
        cwd=tmp_path, env=_env(STEPS=150, SLEEP=0.02, TERM="xterm"), stdin=slave, stdout=slave, stderr=slave,
    )
    os.close(slave)
    seen = b""
    deadline = time.time() + 180
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert "modeldebug ▸ step" in text and "· loss" in text
    assert "done" in text  # the script's own stderr still shows
    assert "completed" in text and "No problems found" in text
