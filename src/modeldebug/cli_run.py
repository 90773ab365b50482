"""`modeldebug run`, read and carried out without typer.

Until the script starts, `modeldebug run` is on the user's clock (issue 4: at most 0.5 s beyond
importing torch). typer costs ~45 ms to import and converts option values through pydantic
(~0.1 s more), so `modeldebug run [OPTIONS] -- COMMAND...` is read here when every option before
`--` is one of run's in a form typer reads the same way. ``python -m modeldebug`` and the
``modeldebug`` entry point (:func:`modeldebug.__main__.main`) come here first; anything else
(--help, a value typer would refuse, no `--`, another command) goes to the typer app in
:mod:`modeldebug.cli`, which owns the help and the error messages. tests/test_run_command.py checks
that both read the same options into the same values.

The helpers the typer commands share with `run` (console, error exit, LM settings) live here too,
so that this module imports nothing beyond the standard library until the command needs it.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, List, NoReturn, Optional

if TYPE_CHECKING:
    from rich.console import Console


class Severity(str, Enum):
    high = "high"
    medium = "medium"
    low = "low"


class Level(str, Enum):
    basic = "basic"
    detailed = "detailed"
    comprehensive = "comprehensive"


def console(stderr: bool = False) -> "Console":
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` (rich markup) as an error and end the command with ``code``."""
    # soft_wrap: a long path is never folded or cut short in the middle (the terminal wraps it)
    console(stderr=True).print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise SystemExit(code)


def lm_settings(model: Optional[str], api_base: Optional[str]):
    """LMSettings from the options or the environment; a missing extra or a bad value ends the command."""
    from modeldebug.errors import MissingExtraError
    from modeldebug.llm.settings import resolve_settings

    try:
        return resolve_settings(model, api_base)
    except (MissingExtraError, ValueError) as exc:
        from rich.markup import escape

        fail(escape(str(exc)))


def print_llm(report, out: "Console") -> None:
    """One line when the LM could not be used (what it said, when it could, is in the report printed above)."""
    from rich.markup import escape

    llm = report.metrics.llm
    if llm is not None and llm.status == "fallback":
        out.print(f"[yellow]note:[/] {escape(llm.notice or 'the LM gave no usable answer')}", soft_wrap=True)


def run(
    command: List[str],
    *,
    json_out: Optional[Path],
    html_out: Optional[Path],
    issue: Optional[str],
    fail_on: Optional[str],
    every: Optional[int],
    level: str,
    store: Path,
    lm: Optional[str],
    lm_api_base: Optional[str],
    rules: Optional[List[Path]] = None,
    baseline: Optional[str] = None,
    export: Optional[List[str]] = None,
    alerts: Optional[Path] = None,
    stop_on: Optional[str] = None,
    live_budget: Optional[float] = None,
) -> NoReturn:
    """`modeldebug run` once its options are read (by typer, or by :func:`run_args`); exits with the
    script's exit code (or 1 when ``fail_on`` is reached). Options left out (None) take the project's
    configuration file's value (:mod:`modeldebug.project_config`), else the default."""
    from modeldebug.errors import MissingExtraError
    from modeldebug.runner import run_script

    # Bad input is refused before the script starts: found after training, it would cost the run.
    check_outputs(json_out=json_out, html_out=html_out)
    _refuse(output_problem(alerts, "--alerts"))
    check_command(command)
    targets = export_targets(export)
    if stop_on is not None:
        from modeldebug.live_diagnosis import parse_stop_on

        try:
            parse_stop_on(stop_on)
        except ValueError as exc:
            _refuse(str(exc))
    if live_budget is not None and not 0 < live_budget <= 0.5:
        _refuse(f"--live-budget takes a fraction of the wall time above 0 and at most 0.5 (0.01 is the default); "
                f"got {live_budget:g}")
    project, diagnose_with = project_settings(
        {"level": level, "every": every, "store": store, "fail-on": fail_on, "rules": [str(r) for r in rules or []],
         "live-budget": live_budget},
        baseline)
    store, fail_on = Path(project["store"]), project["fail-on"]
    settings = lm_settings(lm, lm_api_base)
    # DebuggingConfig's fields, validated by the watched process: each value has been checked here.
    config = {"analysis_level": project["level"], "every": project["every"], "store_path": str(store)}
    if project["sampling-budget"] is not None:
        config["target_overhead"] = project["sampling-budget"]
    try:
        result = run_script(command, config=config, store_path=store, json_out=json_out, html_out=html_out, issue=issue,
                            lm=settings, prepare=("rich.console", "modeldebug.report.terminal", *export_imports(targets)),
                            diagnose_with=diagnose_with, alerts=alerts, stop_on=stop_on,
                            live_budget=project["live-budget"])
    except (ValueError, MissingExtraError) as exc:  # MissingExtraError: --html without the report extra
        from rich.markup import escape

        fail(escape(str(exc)))
    except OSError as exc:  # a report file that could not be written after all (a full disk): checked above
        from rich.markup import escape

        fail(escape(f"Could not write the report file: {exc}. The run and its report are kept in the store: "
                    f"`modeldebug runs --store {store}`, then `modeldebug report RUN_ID`."), 1)
    from modeldebug.report.terminal import print_report

    try:
        print_report(result.report, console(stderr=True), issue=issue, written=result.written)
        print_llm(result.report, console(stderr=True))
    except OSError:  # the terminal is gone (SIGHUP: a closed ssh session); the report is in the store
        pass
    export_and_tell(result.report, targets)
    raise SystemExit(result.cli_exit_code(fail_on))


STDOUT = "-"  # `--json -`: the JSON report on stdout


def project_settings(command_line: dict, baseline: Optional[str] = None, store_must_exist: bool = False):
    """The settings in force (defaults < the project's configuration file < ``command_line``) and the
    diagnosis' keyword arguments; a bad file, rule file or baseline ends the command (exit 2)."""
    from modeldebug.project_config import ConfigError, diagnosis_settings, resolve

    try:
        project = resolve(command_line)
        store = None
        if baseline:
            from modeldebug.store import RunStore, StoreError

            path = Path(project["store"])
            if not path.exists():
                raise ConfigError(f"--baseline {baseline}: no run store at {path} to find it in.")
            try:
                store = RunStore(path, read_only=True)
            except StoreError as exc:
                raise ConfigError(f"--baseline {baseline}: {exc}") from None
        try:
            return project, diagnosis_settings(project, baseline, store)
        finally:
            if store is not None:
                store.close()
    except ValueError as exc:  # ConfigError, RuleLoadError
        from rich.markup import escape

        fail(escape(str(exc)))


def check_outputs(**paths: Optional[Path]) -> None:
    """End the command (exit 2) when an output path asked for cannot be written; ``json_out=...``
    names the option ``--json``."""
    for key, path in paths.items():
        _refuse(output_problem(path, "--" + key.removesuffix("_out")))


def _refuse(problem: Optional[str]) -> None:
    if problem:
        from rich.markup import escape

        fail(escape(problem))  # paths and commands may hold brackets, which rich would take for markup


def output_problem(path: Optional[Path], option: str) -> Optional[str]:
    """Why ``path`` cannot be written (None when it can, or is ``-`` for ``--json``)."""
    if path is None:
        return None
    if str(path) == STDOUT:
        return None if option == "--json" else f"{option} needs a file path (only --json writes to stdout with -)."
    path = Path(path).absolute()
    if path.is_dir():
        return f"{option} {path} is a directory: name a file in it, e.g. {path / ('report' + option[1:].replace('-', '.'))}"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"Cannot write {option} {path}: permission denied."
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"Cannot write {option} {path}: {existing} is a file, not a directory."
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"Cannot write {option} {path}: no permission to create files in {existing}."
    return None


def check_command(command: List[str]) -> None:
    """End the command (exit 2) when ``command`` cannot start: nothing is run and no run is recorded."""
    _refuse(command_problem(command))


def command_problem(command: List[str]) -> Optional[str]:
    """Why ``command`` cannot start (an unknown option, a directory, a file that is not executable, a
    Python script that is missing or does not compile), or None."""
    if not command:
        return None  # the runner says what to type
    program = command[0]
    if program.startswith("-"):
        import difflib

        close = difflib.get_close_matches(program.partition("=")[0], list(RUN_OPTIONS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return (f"No such option: {program}{hint}. Options of `modeldebug run` come before `--`, the command "
                f"after it: modeldebug run [OPTIONS] -- python train.py")
    import shutil

    found = shutil.which(program)
    if found is None and os.path.lexists(program):
        if os.path.isdir(program):
            return f"The command cannot start: {program} is a directory, not a program."
        if not os.access(program, os.X_OK):
            return (f"The command cannot start: {program} is not executable. Run it with its interpreter "
                    f"(python {program}) or make it executable (chmod +x {program}).")
    if _is_this_python(program, found):
        return _script_problem(command[1:])
    return None


def _is_this_python(program: str, found: Optional[str]) -> bool:
    # A script is compiled only by the interpreter that will run it (another version has other syntax).
    if program in ("python", "python3") and not os.environ.get("VIRTUAL_ENV"):
        return True  # the runner runs it with this interpreter
    return found is not None and os.path.realpath(found) == os.path.realpath(sys.executable)


# Python's own options that take a value (the script comes after them).
_PYTHON_VALUE_FLAGS = "WX"
_PYTHON_VALUE_OPTIONS = ("--check-hash-based-pycs",)


def _script_problem(args: List[str]) -> Optional[str]:
    """A missing script or a SyntaxError in it, for ``python [OPTIONS] SCRIPT ...``."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _PYTHON_VALUE_OPTIONS:
            i += 2
            continue
        if arg == "-" or not arg.startswith("-"):
            break
        if arg.startswith("--"):
            return None  # --version, --help: no script
        flags = arg[1:]
        for j, flag in enumerate(flags):
            if flag in "cm":
                return None  # python -c CODE / -m MODULE
            if flag in _PYTHON_VALUE_FLAGS:
                i += 1 if j + 1 < len(flags) else 2
                break
        else:
            i += 1
    if i >= len(args) or args[i] == "-":
        return None
    script = args[i]
    if not os.path.exists(script):
        return f"The script does not exist: no file {script} (from {os.getcwd()}); check the path after `--`."
    if not script.endswith(".py") or not os.path.isfile(script):
        return None  # a directory or zip application with __main__: Python reads it its own way
    import warnings

    try:
        with open(script, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Python warns again when it runs the script
            compile(f.read(), script, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{exc.filename or script}:{exc.lineno}" if exc.lineno else script
        line = f"\n    {exc.text.strip()}" if exc.text and exc.text.strip() else ""
        return f"The script cannot start: {type(exc).__name__} at {where}: {exc.msg}{line}"
    except (OSError, ValueError) as exc:  # unreadable; source with NUL bytes
        return f"The script cannot start: {script}: {exc}"
    return None


RUN_OPTIONS = {
    "--json": "json_out",
    "--html": "html_out",
    "--issue": "issue",
    "--fail-on": "fail_on",
    "--every": "every",
    "--level": "level",
    "--store": "store",
    "--lm": "lm",
    "--lm-api-base": "lm_api_base",
    "--rules": "rules",
    "--baseline": "baseline",
    "--export": "export",
    "--alerts": "alerts",
    "--stop-on": "stop_on",
    "--live-budget": "live_budget",
}
# Options that may be given more than once (a list of values).
RUN_LISTS = {"rules": Path, "export": str}  # option -> how each value is read
# None: not given, the project's configuration file (or the default) decides.
RUN_DEFAULTS = {
    "json_out": None,
    "html_out": None,
    "issue": None,
    "fail_on": None,
    "every": None,
    "level": None,
    "store": None,
    "lm": None,
    "lm_api_base": None,
    "rules": None,
    "baseline": None,
    "export": None,
    "alerts": None,
    "stop_on": None,
    "live_budget": None,
}


def run_args(argv: List[str]) -> Optional[tuple]:
    """(command, options) for :func:`run`, or None when typer should read ``argv``."""
    if len(argv) < 3 or argv[0] != "run" or "--" not in argv:
        return None
    end = argv.index("--")
    options, command = argv[1:end], argv[end + 1 :]
    if not command:
        return None
    values = dict(RUN_DEFAULTS)
    i = 0
    while i < len(options):
        flag, eq, value = options[i].partition("=")
        if flag not in RUN_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(options):
                return None
            i += 1
            value = options[i]
        if value.startswith("-"):
            return None
        key = RUN_OPTIONS[flag]
        if key in RUN_LISTS:
            values[key] = [*(values[key] or []), RUN_LISTS[key](value)]
        else:
            values[key] = value
        i += 1
    if values["fail_on"] is not None and values["fail_on"] not in Severity.__members__:
        return None
    if values["level"] is not None and values["level"] not in Level.__members__:
        return None
    if values["every"] is not None:
        if not (values["every"].isascii() and values["every"].isdigit() and int(values["every"]) >= 1):
            return None
        values["every"] = int(values["every"])
    if values["live_budget"] is not None:
        try:
            values["live_budget"] = float(values["live_budget"])
        except ValueError:
            return None
    for key in ("json_out", "html_out", "store", "alerts"):
        if values[key] is not None:
            values[key] = Path(values[key])
    return command, values


def main(argv: List[str]) -> bool:
    """Carry out ``argv`` when it is a `modeldebug run` read here (exits); False when typer should."""
    parsed = run_args(argv)
    if parsed is None:
        return False
    command, options = parsed
    try:
        run(command, **options)
    except KeyboardInterrupt:  # what click's standalone mode does
        sys.stderr.write("\nAborted!\n")
        raise SystemExit(1) from None
    finally:
        # This process ends here (main is only called as the program): spare the interpreter the
        # collector's passes over every object at exit, ~60 ms once numpy, pydantic and rich are
        # loaded. Objects are still released, streams flushed and atexit handlers run.
        import gc

        gc.freeze()
    return True


# --- --export ---------------------------------------------------------------------------------------


def export_targets(texts: Optional[List[str]]) -> list:
    """The ``--export`` targets, checked before anything runs: a wrong name or a missing library
    ends the command (exit 2) instead of costing a training run. Imports no platform library."""
    if not texts:
        return []
    from modeldebug.errors import MissingExtraError
    from modeldebug.export.targets import check_targets

    try:
        return check_targets(texts)
    except (ValueError, MissingExtraError) as exc:
        from rich.markup import escape

        fail(escape(f"--export: {exc}"))


def export_imports(targets: list) -> tuple:
    """The platform libraries the exports will use, imported while the script runs (MLflow's client
    takes ~2 s to import)."""
    from modeldebug.export.targets import IMPORTS

    return tuple(name for t in targets for name in IMPORTS[t.kind])


def export_and_tell(report, targets: list) -> None:
    """Each target written, one line each on stderr; a failed export is a note and changes nothing
    else (the JSON, HTML and stored report are already written)."""
    if not targets:
        return
    from rich.markup import escape

    from modeldebug.export import export_report

    for target in targets:
        result = export_report(report, target)
        line = (f"[dim]exported to {escape(target.kind)}: {escape(result.location or '')}[/]" if result.ok else
                f"[yellow]note:[/] {escape(str(result))}; the report itself is written and stored")
        try:
            console(stderr=True).print(line, soft_wrap=True)
        except OSError:  # the terminal is gone; the export is done
            pass
