"""Bad input at the command line (issue 16, items 3, 5, 7, 9, 10): refused before any work, in one
line, exit 2, no traceback and no run left behind; `explain` refuses what is not a traceback and
explains a wrapped exception by its chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from modeldebug import cli_run
from modeldebug.store import RunStore

OK_SCRIPT = "print('trained')\n"
SHAPE_ERROR = "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x2048 and 512x10)\n"


def _modeldebug(*args, cwd, stdin=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "modeldebug", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=240)


def _refused(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    flat = " ".join(proc.stderr.split())
    assert all(w in flat for w in words), flat


def _no_runs(cwd: Path):
    db = cwd / ".modeldebug" / "runs.db"
    if db.exists():
        with RunStore(db) as store:
            assert store.list_runs() == []


# --- item 3: output paths checked before the script starts ----------------------------------------


def test_run_refuses_an_html_path_that_is_a_directory_before_training(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "t.py").write_text("open('started', 'w').close()\n")
    proc = _modeldebug("run", "--html", "out", "--", sys.executable, "t.py", cwd=tmp_path)
    _refused(proc, "--html", "is a directory")
    assert not (tmp_path / "started").exists()  # the script never ran
    _no_runs(tmp_path)


def test_report_and_explain_refuse_unwritable_json_paths(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "tb.txt").write_text(SHAPE_ERROR)
    _refused(_modeldebug("explain", "tb.txt", "--json", "afile/r.json", cwd=tmp_path), "--json", "is a file, not a directory")
    _refused(_modeldebug("report", "latest", "--json", str(tmp_path), cwd=tmp_path), "--json", "is a directory")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_report_file_that_fails_after_training_is_one_line_and_the_run_is_kept(tmp_path):
    (tmp_path / "t.py").write_text(OK_SCRIPT)
    proc = _modeldebug("run", "--json", "/dev/full", "--", sys.executable, "t.py", cwd=tmp_path)  # writable, but full
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "No space left on device" in proc.stderr and "kept in the store" in " ".join(proc.stderr.split())
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        (info,) = store.list_runs()
        assert info.status == "completed" and store.load_report(info.id) is not None


def test_output_problems(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    assert cli_run.output_problem(None, "--json") is None
    assert cli_run.output_problem(Path("-"), "--json") is None  # stdout
    assert "file path" in cli_run.output_problem(Path("-"), "--html")
    assert cli_run.output_problem(tmp_path / "new" / "dirs" / "r.json", "--json") is None  # created when written
    assert "is a directory" in cli_run.output_problem(tmp_path, "--html")
    assert "not a directory" in cli_run.output_problem(tmp_path / "afile" / "r.json", "--json")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a user without write permission (tests run as root)
    assert "permission denied" in cli_run.output_problem(tmp_path / "afile", "--json")
    assert "no permission" in cli_run.output_problem(tmp_path / "new" / "r.json", "--json")


def test_json_dash_means_stdout(tmp_path):
    (tmp_path / "tb.txt").write_text(SHAPE_ERROR)
    proc = _modeldebug("explain", "tb.txt", "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["findings"][0]["kind"] == "runtime_error"  # the terminal report went to stderr
    assert "runtime_error" in proc.stderr and not (tmp_path / "-").exists()


# --- item 5: a command that cannot start ----------------------------------------------------------


@pytest.mark.parametrize(
    "setup, command, words",
    [
        (lambda d: (d / "adir").mkdir(), ["./adir"], ["cannot start", "is a directory"]),
        (lambda d: (d / "t.py").write_text(OK_SCRIPT), ["./t.py"], ["cannot start", "not executable", "python ./t.py"]),
        (lambda d: None, [sys.executable, "missing.py"], ["script does not exist", "missing.py"]),
        (lambda d: (d / "bad.py").write_text("x = 1\ndef f(:\n"), [sys.executable, "-u", "bad.py"],
         ["SyntaxError at bad.py:2"]),
    ],
    ids=["directory", "not-executable", "missing-script", "syntax-error"],
)
def test_a_command_that_cannot_start_is_refused_with_no_run(tmp_path, setup, command, words):
    setup(tmp_path)
    proc = _modeldebug("run", "--", *command, cwd=tmp_path)
    _refused(proc, *words)
    assert "No problems found" not in proc.stderr
    _no_runs(tmp_path)


def test_a_crash_nothing_watched_explains_is_not_called_no_problems(tmp_path):
    # What no check can see before the start (a module that is not there): the summary says so.
    proc = _modeldebug("run", "--", sys.executable, "-m", "no_such_module_xyz", cwd=tmp_path)
    assert proc.returncode == 1
    assert "No problems found" not in proc.stderr
    assert "the script failed (exit 1)" in " ".join(proc.stderr.split())


def test_a_spawn_failure_leaves_no_run_marked_running(tmp_path):
    from modeldebug.runner import run_script

    script = tmp_path / "noshebang"
    script.write_text("print(1)\n")  # executable but no #! line: exec fails with ENOEXEC
    script.chmod(0o755)
    store = tmp_path / "runs.db"
    with pytest.raises(ValueError, match="could not start"):
        run_script([str(script)], store_path=store, show_status=False)
    with RunStore(store) as s:
        (info,) = s.list_runs()
    assert info.status == "crashed" and info.exit_code == 126


def test_python_options_before_the_script_are_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.py").write_text("def f(:\n")
    py = sys.executable
    for args in (["-W", "ignore", "bad.py"], ["-Wignore", "-X", "dev", "bad.py"], ["-uB", "bad.py"]):
        assert "SyntaxError" in cli_run.command_problem([py, *args]), args
    for args in (["-c", "pass"], ["-m", "http.server"], ["-"], ["--version"], ["-W", "ignore", "-c", "1"]):
        assert cli_run.command_problem([py, *args]) is None, args


# --- item 10: small things ------------------------------------------------------------------------


def test_an_unknown_option_before_the_command_is_named(tmp_path):
    for argv in (["run", "--jsn", "x.json", "--", "python", "t.py"], ["run", "--jsn=x.json", "--", "python", "t.py"]):
        proc = _modeldebug(*argv, cwd=tmp_path)
        _refused(proc, "No such option: --jsn", "did you mean --json?")
        assert "Cannot find the program" not in proc.stderr


def test_version(tmp_path):
    from importlib.metadata import version

    proc = _modeldebug("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"modeldebug {version('modeldebug')}"


def test_negative_tolerances_are_refused():
    from typer.testing import CliRunner

    from modeldebug.cli import _mount_subcommands, app

    _mount_subcommands()
    for option in ("--rtol", "--atol"):
        result = CliRunner().invoke(app, ["onnx", "compare", "m.py:f", option, "-1"])
        assert result.exit_code == 2 and option in result.output and "greater than or equal to 0" in result.output, result.output


def test_every_option_and_argument_has_help():
    import typer

    from modeldebug.cli import _mount_subcommands, app

    _mount_subcommands()
    missing = []

    def walk(command, path):
        for param in command.params:
            if not getattr(param, "help", None) and param.name != "help":
                missing.append(f"{path} {param.opts[0]}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "modeldebug")
    assert not missing, missing


def test_runs_shows_the_whole_id_and_the_script(tmp_path):
    assert _modeldebug("run", "--", sys.executable, "-c", "pass", cwd=tmp_path).returncode == 0
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        (info,) = store.list_runs()
    proc = _modeldebug("runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert info.id in proc.stdout  # on one line, whole: it can be copied
    assert "python -c" in proc.stdout and "pass" in proc.stdout and sys.executable not in proc.stdout


def test_explain_and_onnx_are_not_headed_as_a_run(tmp_path):
    (tmp_path / "tb.txt").write_text(SHAPE_ERROR)
    proc = _modeldebug("explain", "tb.txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("modeldebug explain tb.txt") and "modeldebug run" not in proc.stdout
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    proc = _modeldebug("onnx", "check", "m.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "modeldebug onnx check\n" in proc.stdout and "modeldebug run" not in proc.stdout


# --- item 7: explain refuses what is not a traceback, and strips terminal escapes -----------------


@pytest.mark.parametrize(
    "content, words",
    [
        (b"My model trains slowly and I do not know why.\nAny idea?\n", ["holds no Python traceback"]),
        (bytes(range(256)) * 4, ["binary data"]),
    ],
    ids=["prose", "binary"],
)
def test_explain_refuses_what_is_not_a_traceback(tmp_path, content, words):
    (tmp_path / "in.txt").write_bytes(content)
    proc = _modeldebug("explain", "in.txt", cwd=tmp_path)
    _refused(proc, *words)
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert _modeldebug("explain", "-", cwd=tmp_path, stdin=content.decode("utf-8", "replace")).returncode == 2


def test_explain_strips_terminal_escapes(tmp_path):
    text = "Traceback (most recent call last):\n  File \"t.py\", line 3, in <module>\n    f()\n" \
           "ValueError: \x1b[31mbad value\x1b[0m\x07 \x1b]0;owned\x07here\r\n"
    (tmp_path / "tb.txt").write_text(text)
    proc = _modeldebug("explain", "tb.txt", "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    finding = json.loads((tmp_path / "r.json").read_text())["findings"][0]
    assert finding["evidence"]["error_message"] == "bad value here"


def test_clean_text_on_live_exceptions():
    from modeldebug.diagnose import clean_text, diagnose_exception

    assert clean_text("\x1b[1;31mred\x1b[0m\tok\r\nnext\x9b2J\x00") == "red\tok\nnext"
    f = diagnose_exception(RuntimeError("\x1b[31mboom\x1b[0m"))
    assert f.evidence["error_message"] == "boom" and "\x1b" not in f.message


# --- item 9 (last part): a wrapped exception is explained by its chain -----------------------------


def _wrapped_shape_error():
    import torch
    from torch import nn

    def load():
        try:
            nn.Linear(512, 10)(torch.randn(64, 2048))
        except RuntimeError as exc:
            raise ValueError("could not run the model") from exc

    try:
        load()
    except ValueError as exc:
        return exc


def test_a_wrapped_exception_is_explained_by_its_cause():
    from modeldebug.diagnose import diagnose_exception, diagnose_text

    exc = _wrapped_shape_error()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for f in (diagnose_exception(exc), diagnose_text(text)):
        assert f.evidence["cause"] == "shape_mismatch" and f.evidence["error_type"] == "RuntimeError"
        assert "nn.Linear(2048, 10)" in f.message
        assert "raised again as `ValueError: could not run the model`" in f.message  # the wrapper is named
        assert [link["error_type"] for link in f.evidence["chain"]] == ["RuntimeError", "ValueError"]


def test_an_unexplained_wrapper_names_its_cause():
    from modeldebug.diagnose import diagnose_exception

    try:
        try:
            {}["x"]
        except KeyError as inner:
            raise ValueError("config broken") from inner
    except ValueError as exc:
        f = diagnose_exception(exc)
    assert f.evidence["error_type"] == "ValueError" and "raised from `KeyError: 'x'`" in f.message
