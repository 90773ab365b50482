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


def _on_terminal(tmp_path, command, env, *, answer=None, timeout=180):
    """`modeldebug run -- COMMAND` on a pseudo-terminal: (what it showed, its exit code).
    ``answer``: (prompt, reply): the reply is typed once the prompt shows (never if it does not)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeldebug", "run", "--", *command],
        cwd=tmp_path, env=env, stdin=slave, stdout=slave, stderr=slave,
    )
    os.close(slave)
    seen = b""
    deadline = time.time() + timeout
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
            if answer and answer[0] in seen:
                os.write(master, answer[1])
                answer = None
        elif proc.poll() is not None:
            break
    os.close(master)
    return seen.decode(errors="replace"), proc.wait(timeout=60)


def test_live_status_line_on_a_terminal(tmp_path):
    """On a terminal the script's output passes through and a status line shows steps and loss."""
    text, code = _on_terminal(tmp_path, [sys.executable, SCRIPT], _env(STEPS=150, SLEEP=0.02, TERM="xterm"))
    assert code == 0
    assert "modeldebug ▸ step" in text and "· loss" in text
    assert "done" in text  # the script's own stderr still shows
    assert "completed" in text and "No problems found" in text


_LEAVES_A_SERVER = """
import subprocess, sys, torch
server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(90)"])
print("server", server.pid, flush=True)
"""


def test_on_a_terminal_the_report_does_not_wait_for_what_the_script_left_running(tmp_path):
    """A server the script started holds the terminal open after the script exits (a tensorboard)."""
    started = time.time()
    text, code = _on_terminal(tmp_path, [sys.executable, "-c", _LEAVES_A_SERVER], _env(TERM="xterm"))
    took = time.time() - started
    server = int(text.split("server ", 1)[1].split()[0])
    try:
        assert code == 0 and "completed" in text
        assert took < 60, took  # not the server's 90 s
    finally:
        try:
            os.kill(server, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_an_input_prompt_shows_on_a_terminal(tmp_path):
    """A prompt without a newline shows while the script waits for the answer (not under the status line)."""
    script = "import torch, time\nprint('hello', flush=True)\ntime.sleep(2)\nname = input('name? ')\nprint('got', name)\n"
    text, code = _on_terminal(tmp_path, [sys.executable, "-c", script], _env(TERM="xterm"),
                              answer=(b"name? ", b"bob\n"), timeout=120)
    assert code == 0, text
    assert "got bob" in text


# --- start-up: `modeldebug run` adds at most 0.5 s beyond importing torch (issue #4) -------------

# Modules the parent process must not have loaded when it launches the script: they are needed
# only for the diagnosis at the end, and load while the script runs.
HEAVY = ("torch", "numpy", "pydantic", "pydantic_core", "rich", "jinja2", "matplotlib", "dspy", "onnx",
         "onnxruntime", "modeldebug.types", "modeldebug.config", "modeldebug.evidence", "modeldebug.analysis",
         "modeldebug.rules", "modeldebug.report.terminal", "modeldebug.collect.session")

_PARENT_PROBE = """
import json, runpy, subprocess, sys
launched = []
init = subprocess.Popen.__init__
def recording_init(self, *args, **kwargs):
    launched.append(sorted(sys.modules))
    return init(self, *args, **kwargs)
subprocess.Popen.__init__ = recording_init
sys.argv = ["modeldebug"] + sys.argv[1:]
try:
    runpy.run_module("modeldebug", run_name="__main__", alter_sys=True)
finally:
    with open("parent_modules.json", "w") as f:
        json.dump(launched[0] if launched else None, f)
"""

_CHILD_PROBE = "import json, sys; json.dump(sorted(sys.modules), open('child_modules.json', 'w'))"


def test_the_parent_launches_the_script_before_loading_heavy_modules(tmp_path):
    (tmp_path / "probe.py").write_text(_PARENT_PROBE)
    proc = subprocess.run(
        [sys.executable, "probe.py", "run", "--every", "2", "--store", "runs.db", "--", sys.executable, "-c", _CHILD_PROBE],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    parent = json.loads((tmp_path / "parent_modules.json").read_text())
    assert parent is not None, "the script was not launched through subprocess.Popen"
    loaded = [m for m in HEAVY + ("typer", "modeldebug.cli") if m in parent]
    assert not loaded, f"loaded before the script started: {loaded}"
    # The watched process, before it imports torch: only the post-import hook is in place.
    child = json.loads((tmp_path / "child_modules.json").read_text())
    assert "modeldebug.collect.autopatch" in child
    assert not [m for m in HEAVY if m in child]
    # and the diagnosis still happened, from the store the parent created
    assert "No training was seen: the monitor saw nothing" in " ".join(proc.stderr.split())  # (it never imports torch)
    with RunStore(tmp_path / "runs.db") as store:
        (info,) = store.list_runs()
    assert info.status == "completed" and info.exit_code == 0  # not left "running": the script never imported torch


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "python", "train.py"],
        ["run", "--json", "r.json", "--html=r.html", "--issue", "loss flat", "--fail-on", "medium", "--every", "5",
         "--level=comprehensive", "--store", "x/runs.db", "--lm", "openai/m", "--lm-api-base", "http://h:1/v1",
         "--", "python", "train.py", "--json", "--every", "-3"],
    ],
    ids=["defaults", "every-option"],
)
def test_run_options_read_without_typer_as_typer_reads_them(argv, monkeypatch):
    """`modeldebug run` reads its options itself on the way to the script (typer costs ~45 ms to
    import and its pydantic-based conversion ~0.1 s); what it reads must be what typer would pass."""
    from typer.testing import CliRunner

    from modeldebug import cli, cli_run

    seen = {}
    monkeypatch.setattr(cli, "_run", lambda command, **options: seen.update(command=command, **options))
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    command, options = cli_run.run_args(argv)
    assert {"command": command, **options} == seen
    assert {p.opts[0] for p in typer_params(cli.app, "run")} == set(cli_run.RUN_OPTIONS)


def typer_params(app, name):
    import typer

    return [p for p in typer.main.get_command(app).commands[name].params if p.opts and p.opts[0].startswith("--")]


@pytest.mark.parametrize(
    "argv",
    [["run"], ["run", "--help", "--", "x"], ["run", "python", "train.py"], ["run", "--every", "0", "--", "x"],
     ["run", "--level", "max", "--", "x"], ["run", "--fail-on", "HIGH", "--", "x"], ["run", "--store", "--", "x"],
     ["run", "--unknown", "1", "--", "x"], ["run", "--"], ["runs"], ["report", "--", "x"]],
)
def test_anything_else_goes_to_typer(argv):
    from modeldebug import cli_run

    assert cli_run.run_args(argv) is None


def test_fail_on_counts_only_the_rules_findings():
    from modeldebug.runner import RunResult
    from modeldebug.types import Finding, Report, RunInfo

    def finding(source):
        return Finding(kind="dead_relu", severity="high", confidence=0.3, message="m", source=source)

    run = RunInfo(id="r", status="completed", exit_code=0)
    assert RunResult(Report(run=run, findings=[finding("llm")]), 0).cli_exit_code("medium") == 0
    assert RunResult(Report(run=run, findings=[finding("rules")]), 0).cli_exit_code("medium") == 1
    assert RunResult(Report(run=run, findings=[finding("rules")]), 3).cli_exit_code("medium") == 3


FROZEN_SCRIPT = """\
import torch
from torch import nn

model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
for p in model.parameters():
    p.requires_grad_(False)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 8), torch.randn(32, 1)
for step in range(5):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
"""


def test_a_crash_shows_the_users_traceback_and_says_why(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(FROZEN_SCRIPT)
    plain = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True, timeout=120)
    proc = _modeldebug("run", "--json", "r.json", "--", sys.executable, str(script), cwd=tmp_path)
    assert proc.returncode == 1 == plain.returncode
    shown = proc.stderr[: proc.stderr.index("modeldebug run ")]  # the script's own output, before the report
    frames = [line for line in shown.splitlines() if line.lstrip().startswith("File ")]
    assert frames == [line for line in plain.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert not [f for f in frames if "modeldebug" in f], frames
    (f,) = [f for f in _report(tmp_path / "r.json").findings if f.kind == "runtime_error"]
    assert f.evidence["raised_at"] == f"{script}:12" and f.evidence["no_graph_reason"] == "frozen", f.message


HOGWILD_SCRIPT = """\
import json, subprocess, sys
import torch
import torch.multiprocessing as mp
from torch import nn


def train(model, seed, out):
    import modeldebug.collect.autopatch as autopatch  # what the worker inherited from the watched parent
    watched = autopatch._active is not None or hasattr(torch.Tensor.backward, "__wrapped__")  # (our patch)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for _ in range(10):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    with open(out, "w") as f:
        json.dump({"watched": watched}, f)


if __name__ == "__main__":
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    model.share_memory()
    workers = [mp.Process(target=train, args=(model, rank, f"worker{rank}.json")) for rank in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    subprocess.run([sys.executable, "-c", "print('evaluated')"], check=True)
"""


def test_training_the_run_cannot_see_is_not_called_no_problems(tmp_path):
    (tmp_path / "hogwild.py").write_text(HOGWILD_SCRIPT)
    proc = _modeldebug("run", "--json", "r.json", "--html", "r.html", "--", sys.executable, "hogwild.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evaluated" in proc.stdout
    text = " ".join(proc.stderr.split())
    assert "No problems found" not in text and "No training was seen: no backward() was seen" in text
    rep = _report(tmp_path / "r.json")
    assert rep.run.steps == 0 and rep.run.unwatched is not None
    kinds = {(c["kind"], c["target"]): c["count"] for c in rep.run.unwatched.child_processes}
    assert kinds == {("multiprocessing", "__main__.train"): 2, ("subprocess", f"{sys.executable} -c print('evaluated')"): 1}
    assert "3 child processes" in rep.run.unwatched.reason
    assert "No training was seen" in (tmp_path / "r.html").read_text()
    # each worker's inherited monitor went quiet (its rows could not reach the store)
    assert [json.loads((tmp_path / f"worker{r}.json").read_text())["watched"] for r in range(2)] == [False, False]
