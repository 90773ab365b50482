"""The `modeldebug` command line: argument parsing only; the work lives in the library."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console

# Commands import what they use inside their bodies: `modeldebug run` starts the script after
# loading typer and the run store only (rich, pydantic and numpy load while the script runs).

app = typer.Typer(
    name="modeldebug",
    help="Debug PyTorch training runs and ONNX models: find what is wrong and how to fix it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False) -> "Console":
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)

STORE_HELP = "SQLite run store (one per project directory by default)."
LM_HELP = "Explain and rank findings with this LM (e.g. openai/gpt-4o-mini; env MODELDEBUG_LM). Needs the llm extra."
LM_API_BASE_HELP = "OpenAI-compatible server for --lm (env MODELDEBUG_LM_API_BASE)."


class Severity(str, Enum):
    high = "high"
    medium = "medium"
    low = "low"


class Level(str, Enum):
    basic = "basic"
    detailed = "detailed"
    comprehensive = "comprehensive"


def _fail(message: str, code: int = 2) -> None:
    _console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    no_args_is_help=True,
)
def run(
    ctx: typer.Context,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report here."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write the HTML report (findings next to plots) here."),
    issue: Optional[str] = typer.Option(None, "--issue", help="What you are seeing, e.g. 'model not converging'."),
    fail_on: Optional[Severity] = typer.Option(
        None, "--fail-on", help="Exit 1 when a finding reaches this severity (for CI)."
    ),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="Per-layer statistics every N steps (default: adaptive)."),
    level: Level = typer.Option(Level.detailed, "--level", help="How closely to watch."),
    store: Path = typer.Option(Path(".modeldebug/runs.db"), "--store", help=STORE_HELP),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    lm_api_base: Optional[str] = typer.Option(None, "--lm-api-base", help=LM_API_BASE_HELP),
) -> None:
    """Run a training script unmodified, watch it, and diagnose it.

    modeldebug run [OPTIONS] -- python train.py [ARGS...]
    """
    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    _run(command, json_out=json_out, html_out=html_out, issue=issue, fail_on=fail_on.value if fail_on else None,
         every=every, level=level.value, store=store, lm=lm, lm_api_base=lm_api_base)


def _run(
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
) -> None:
    """`modeldebug run` once its options are read (by typer, or by :func:`_run_args`)."""
    from modeldebug.errors import MissingExtraError
    from modeldebug.runner import run_script

    lm_settings = _lm_settings(lm, lm_api_base)
    # DebuggingConfig's fields, validated by the watched process: each value has been checked here.
    config = {"analysis_level": level, "every": every, "store_path": str(store)}
    try:
        result = run_script(command, config=config, store_path=store, json_out=json_out, html_out=html_out, issue=issue,
                            lm=lm_settings, prepare=("rich.console", "modeldebug.report.terminal"))
    except (ValueError, MissingExtraError) as exc:  # MissingExtraError: --html without the report extra
        from rich.markup import escape

        _fail(escape(str(exc)))
    from modeldebug.report.terminal import print_report

    print_report(result.report, _console(stderr=True), issue=issue, written=result.written)
    _print_llm(result.report, _console(stderr=True))
    raise typer.Exit(result.cli_exit_code(fail_on))


# `modeldebug run [OPTIONS] -- COMMAND...` is read without typer when every option before `--` is
# one of run's, in a form typer reads the same way: typer converts option values through
# pydantic, about 0.1 s before the script can start. Anything else (--help, a value typer would
# refuse, no `--`) goes to typer, which owns the messages. A test checks that this table matches
# the typer command's options and defaults.
_RUN_OPTIONS = {
    "--json": "json_out",
    "--html": "html_out",
    "--issue": "issue",
    "--fail-on": "fail_on",
    "--every": "every",
    "--level": "level",
    "--store": "store",
    "--lm": "lm",
    "--lm-api-base": "lm_api_base",
}
_RUN_DEFAULTS = {
    "json_out": None,
    "html_out": None,
    "issue": None,
    "fail_on": None,
    "every": None,
    "level": Level.detailed.value,
    "store": ".modeldebug/runs.db",
    "lm": None,
    "lm_api_base": None,
}


def _run_args(argv: List[str]) -> Optional[tuple]:
    """(command, options) for `_run`, or None when typer should read ``argv``."""
    if len(argv) < 3 or argv[0] != "run" or "--" not in argv:
        return None
    end = argv.index("--")
    options, command = argv[1:end], argv[end + 1 :]
    if not command:
        return None
    values = dict(_RUN_DEFAULTS)
    i = 0
    while i < len(options):
        flag, eq, value = options[i].partition("=")
        if flag not in _RUN_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(options):
                return None
            i += 1
            value = options[i]
        if value.startswith("-"):
            return None
        values[_RUN_OPTIONS[flag]] = value
        i += 1
    if values["fail_on"] is not None and values["fail_on"] not in Severity.__members__:
        return None
    if values["level"] not in Level.__members__:
        return None
    if values["every"] is not None:
        if not (values["every"].isascii() and values["every"].isdigit() and int(values["every"]) >= 1):
            return None
        values["every"] = int(values["every"])
    for key in ("json_out", "html_out", "store"):
        if values[key] is not None:
            values[key] = Path(values[key])
    return command, values


@app.command()
def runs(
    store: Path = typer.Option(Path(".modeldebug/runs.db"), "--store", help=STORE_HELP),
    limit: int = typer.Option(20, "--limit", min=1),
) -> None:
    """List the runs in the store, newest first."""
    from rich.table import Table

    with _open_store(store) as s:
        rows = s.list_runs(limit=limit)
        table = Table("id", "status", "steps", "duration", "findings", "command")
        for info in rows:
            report = s.load_report(info.id, llm=False)
            findings = "-" if report is None else str(len(report.findings))
            table.add_row(info.id, info.status, str(info.steps), f"{info.duration_s:.1f} s", findings, " ".join(info.command))
    _console().print(table)


@app.command()
def report(
    run_ref: str = typer.Argument("latest", metavar="RUN_ID|latest"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report here."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write the HTML report (findings next to plots) here."),
    reanalyze: bool = typer.Option(False, "--reanalyze", help="Run the rules again on the stored evidence."),
    store: Path = typer.Option(Path(".modeldebug/runs.db"), "--store", help=STORE_HELP),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    lm_api_base: Optional[str] = typer.Option(None, "--lm-api-base", help=LM_API_BASE_HELP),
) -> None:
    """Show a stored run's report again (and write it as JSON)."""
    from modeldebug.analysis import analyze
    from modeldebug.report.terminal import print_report
    from modeldebug.runner import write_json

    lm_settings = _lm_settings(lm, lm_api_base)
    with _open_store(store) as s:
        run_id = _resolve(s, run_ref)
        rep = None if reanalyze else s.load_report(run_id)  # with the latest LM analysis stored for the run
        if rep is None:
            s.save_report(run_id, analyze(s.load_evidence(run_id)))
            rep = s.load_report(run_id)
        if lm_settings is not None:  # the store keeps the rules' report and, beside it, what the LM said
            from modeldebug.llm import enrich_report

            rep, _ = enrich_report(rep, lm_settings, issue=rep.metrics.get("issue"))
            s.save_report(run_id, rep)
    written = []
    if json_out:
        write_json(rep, json_out)
        written.append(str(json_out))
    if html_out:
        from modeldebug.errors import MissingExtraError
        from modeldebug.report.html import write_html

        try:
            write_html(rep, html_out, issue=rep.metrics.get("issue"))
        except MissingExtraError as exc:
            from rich.markup import escape

            _fail(escape(str(exc)))  # the message names the extra in brackets, which rich would take for markup
        written.append(str(html_out))
    print_report(rep, _console(), issue=rep.metrics.get("issue"), written=written)
    _print_llm(rep, _console(stderr=True))


@app.command()
def ask(
    run_ref: str = typer.Argument(..., metavar="RUN_ID|latest"),
    question: str = typer.Argument(..., help='e.g. "why does the loss go flat after epoch 3?"'),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    lm_api_base: Optional[str] = typer.Option(None, "--lm-api-base", help=LM_API_BASE_HELP),
    store: Path = typer.Option(Path(".modeldebug/runs.db"), "--store", help=STORE_HELP),
) -> None:
    """Ask a question about a stored run (an LM agent reads its numbers; without --lm, the matching findings)."""
    from rich.markup import escape

    from modeldebug.analysis import analyze
    from modeldebug.llm.chat import ask as ask_run

    lm_settings = _lm_settings(lm, lm_api_base)
    with _open_store(store) as s:
        run_id = _resolve(s, run_ref)
        evidence = s.load_evidence(run_id)
        rep = s.load_report(run_id, llm=False) or analyze(evidence)  # the measured findings: what AskRun promises
    result = ask_run(evidence, rep, question, lm_settings)
    if result.notice:
        _console(stderr=True).print(f"[yellow]note:[/] {escape(result.notice)}", soft_wrap=True)
    elif lm_settings is None:
        _console(stderr=True).print(
            "[dim]no LM configured (--lm MODEL or MODELDEBUG_LM): answering from the rule engine's findings[/]"
        )
    _console().print(escape(result.answer))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the report (the contract other tools rely on)."""
    from modeldebug.types import Report

    sys.stdout.write(json.dumps(Report.json_schema(), indent=2) + "\n")


@app.command()
def explain(
    traceback_file: str = typer.Argument(..., metavar="TRACEBACK_FILE", help="A saved traceback (or its last line); - for stdin."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report with this one finding as JSON here."),
) -> None:
    """Explain a crash from its saved traceback: the cause, the layer, and the fix."""
    from modeldebug.diagnose import diagnose_text
    from modeldebug.report.terminal import print_report
    from modeldebug.types import Report, RunInfo

    if traceback_file == "-":
        text = sys.stdin.read()
    else:
        path = Path(traceback_file)
        if not path.is_file():
            _fail(f"No traceback file at {path}: save the error output first (python train.py 2> traceback.txt).")
        text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        _fail(f"{traceback_file} is empty: expected a Python traceback or an error message.")
    rep = Report(run=RunInfo(id="explain", status="completed"), findings=[diagnose_text(text)])
    written = []
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(rep.to_json(), encoding="utf-8")
        written.append(str(json_out))
    print_report(rep, _console(), written=written)


def _lm_settings(model: Optional[str], api_base: Optional[str]):
    """LMSettings from the options or the environment; a missing extra or a bad value ends the command."""
    from modeldebug.errors import MissingExtraError
    from modeldebug.llm.settings import resolve_settings

    try:
        return resolve_settings(model, api_base)
    except (MissingExtraError, ValueError) as exc:
        from rich.markup import escape

        _fail(escape(str(exc)))


def _print_llm(report, console: Console) -> None:
    """One line when the LM could not be used (what it said, when it could, is in the report printed above)."""
    from rich.markup import escape

    llm = (report.metrics or {}).get("llm") or {}
    if llm.get("status") == "fallback":
        console.print(f"[yellow]note:[/] {escape(llm.get('notice', 'the LM gave no usable answer'))}", soft_wrap=True)


def _open_store(path: Path):
    """An existing run store, or a one-line error that says what to do."""
    from modeldebug.errors import DebuggingError
    from modeldebug.store import RunStore

    if not path.exists():
        _fail(f"No run store at {path}: run `modeldebug run -- python train.py` first.", 1)
    try:
        return RunStore(path)
    except DebuggingError as exc:
        _fail(str(exc), 1)


def _resolve(store, run_ref: str) -> str:
    try:
        return store.resolve(run_ref)
    except ValueError as exc:
        _fail(str(exc), 1)


def _mount_subcommands() -> None:
    # Sub-apps import their heavy dependencies lazily, inside their commands.
    from modeldebug.onnx.cli import onnx_app

    app.add_typer(onnx_app, name="onnx", help="Check, profile, find NaN in, and compare ONNX models.")


def main() -> None:
    fast = _run_args(sys.argv[1:])
    if fast is not None:
        command, options = fast
        try:
            _run(command, **options)
        except typer.Exit as exc:  # what click's standalone mode does with these
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.stderr.write("\nAborted!\n")
            sys.exit(1)
        return
    _mount_subcommands()
    app()


if __name__ == "__main__":
    main()
