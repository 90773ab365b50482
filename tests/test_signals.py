"""`modeldebug run` ended by a signal (issue 16): the report is written, the run is closed with the
signal named, the exit code is 128+signum, and no process the script started is left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modeldebug.store import RunStore
from modeldebug.types import Report

SCRIPTS = Path(__file__).parent / "scripts"
TRAIN = str(SCRIPTS / "train_small.py")
WITH_HELPER = str(SCRIPTS / "train_with_helper.py")


def _env(tmp_path, **extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", STEPS="100000", SLEEP="0.02", LOSSES_OUT=str(tmp_path / "losses.json"),
               HELPER_PID_OUT=str(tmp_path / "helper.pid"), SCRIPT_PID_OUT=str(tmp_path / "script.pid"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _start(tmp_path, script=WITH_HELPER, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--", sys.executable, script],
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def _wait_for_steps(tmp_path, proc, n=10):
    losses = tmp_path / "losses.json"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if len(json.loads(losses.read_text())["losses"]) >= n:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the script made no steps")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def _report(tmp_path) -> Report:
    return Report.model_validate(json.loads((tmp_path / "r.json").read_text()))


def _stored_run(tmp_path, run_id):
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        (info,) = [r for r in store.list_runs() if r.id == run_id]
        return info, len(store.load_evidence(run_id).steps)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="leftover processes are found through /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("target", ["modeldebug", "script", "group"])
def test_a_signal_ends_the_run_with_its_report_and_no_process_left(tmp_path, signum, target):
    """``target``: `modeldebug run` alone (kill PID), the script alone, or the whole process group
    (`timeout`, a closed terminal)."""
    proc = _start(tmp_path, start_new_session=True)
    _wait_for_steps(tmp_path, proc)
    helper, script = (int((tmp_path / f"{name}.pid").read_text()) for name in ("helper", "script"))
    started = time.time()
    if target == "modeldebug":
        os.kill(proc.pid, signum)
    elif target == "script":
        os.kill(script, signum)
    else:
        os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert time.time() - started < 60
    rep = _report(tmp_path)
    name = signal.Signals(signum).name
    assert rep.run.status == "terminated" and rep.run.signal == name, err
    assert f"terminated by {name}" in err  # the terminal report says which signal
    assert not [f for f in rep.findings if f.kind == "runtime_error"]
    info, stored_steps = _stored_run(tmp_path, rep.run.id)
    assert info.status == "terminated" and info.signal == name  # not left "running"
    assert rep.run.steps >= 10 and stored_steps >= 10  # the last batch was written
    assert [m.name for m in rep.run.models] == ["Sequential"]
    assert not _alive(script) and not _alive(helper)  # no orphan


def test_a_killed_script_is_summarized_from_what_is_stored(tmp_path):
    proc = _start(tmp_path, script=TRAIN)
    _wait_for_steps(tmp_path, proc, n=60)
    (child,) = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(child), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, err
    rep = _report(tmp_path)
    assert rep.run.status == "crashed" and rep.run.signal == "SIGKILL"
    _, stored_steps = _stored_run(tmp_path, rep.run.id)
    assert stored_steps >= 20 and rep.run.steps >= stored_steps  # not "0 steps"
    assert [m.name for m in rep.run.models] == ["Sequential"]  # not "no models"


def test_ctrl_c_is_a_status_not_a_fault(tmp_path):
    proc = _start(tmp_path, script=TRAIN, start_new_session=True)
    _wait_for_steps(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    rep = _report(tmp_path)
    assert rep.run.status == "interrupted" and rep.run.signal == "SIGINT"
    assert not [f for f in rep.findings if f.kind == "runtime_error"], [f.message for f in rep.findings]


def _make_controlling_terminal():
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="leftover processes are found through /proc")
def test_a_closed_terminal_ends_the_run_with_its_report(tmp_path):
    """A closed ssh session: the terminal hangs up (SIGHUP to its foreground group, writes fail)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--", sys.executable, WITH_HELPER],
        cwd=tmp_path, env=_env(tmp_path, TERM="xterm"), stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True, preexec_fn=_make_controlling_terminal,
    )
    os.close(slave)
    try:
        import select

        deadline = time.time() + 180
        while time.time() < deadline:  # the terminal is read, as it would be, until it closes
            if select.select([master], [], [], 0.2)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
            try:
                if len(json.loads((tmp_path / "losses.json").read_text())["losses"]) >= 10:
                    break
            except (OSError, ValueError):
                pass
        helper, script = (int((tmp_path / f"{name}.pid").read_text()) for name in ("helper", "script"))
    finally:
        os.close(master)  # hang up
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    rep = _report(tmp_path)
    assert rep.run.status == "terminated" and rep.run.signal == "SIGHUP"
    assert rep.run.steps >= 10
    assert not _alive(script) and not _alive(helper)
