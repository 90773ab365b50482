"""The `modeldebug` command line: argument parsing only; the work lives in the library."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

# `modeldebug run` in its plain form never gets here (modeldebug.cli_run reads it without typer);
# the commands import what they use inside their bodies.
from modeldebug.cli_run import STDOUT, Level, Severity
from modeldebug.cli_run import check_outputs as _check_outputs
from modeldebug.cli_run import console as _console
from modeldebug.cli_run import export_and_tell as _export_and_tell
from modeldebug.cli_run import export_targets as _export_targets
from modeldebug.cli_run import fail as _fail
from modeldebug.cli_run import lm_settings as _lm_settings
from modeldebug.cli_run import print_llm as _print_llm
from modeldebug.cli_run import project_settings as _project_settings
from modeldebug.cli_run import run as _run

app = typer.Typer(
    name="modeldebug",
    help="Debug PyTorch training runs and ONNX models: find what is wrong and how to fix it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


STORE_HELP = "SQLite run store (default: the project's `store` setting, else .modeldebug/runs.db)."
LEVEL_HELP = "How closely to watch (default: the project's `level` setting, else detailed)."
RULES_HELP = "A Python file of your own rules (Rule subclasses, see docs/rules.md); repeat for several."
LIVE_BUDGET_HELP = ("Fraction of the wall time the findings-while-it-runs passes may take (default 0.01: a pass "
                    "of 0.2 s every 20 s); a NaN is acted on within a second whatever the budget.")
ALERTS_HELP = "Append one JSON line to this file per finding as it appears while the script runs (and when its severity changes)."
STOP_ON_HELP = ("Stop the script (as Ctrl-C does) when a finding of this severity, or of one of these kinds, appears "
                "while it runs; the run's status is then `stopped` and modeldebug exits non-zero.")
BASELINE_HELP = "An earlier run (id or latest): report only findings it did not have; the others are kept, suppressed."
LM_HELP = "Explain and rank findings with this LM (e.g. openai/gpt-4o-mini; env MODELDEBUG_LM). Needs the llm extra."
LM_API_BASE_HELP = "OpenAI-compatible server for --lm (env MODELDEBUG_LM_API_BASE)."
JSON_HELP = "Write the JSON report here (- for stdout)."
HTML_HELP = "Write the HTML report (findings next to plots) here."
EXPORT_HELP = ("Also write the findings and summary metrics to tensorboard:DIR, mlflow:URI (mlflow:DIR: a local "
               "file store) or wandb[:DIR] (an offline run); repeat for several.")
RUN_REF_HELP = "A run id (or the start of one) from `modeldebug runs`, or latest."


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            sys.stdout.write(f"modeldebug {version('modeldebug')}\n")
        except PackageNotFoundError:  # run from a source tree that was never installed
            sys.stdout.write("modeldebug (version unknown: not installed)\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Debug PyTorch training runs and ONNX models: find what is wrong and how to fix it."""


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    no_args_is_help=True,
)
def run(
    ctx: typer.Context,
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
    html_out: Optional[Path] = typer.Option(None, "--html", help=HTML_HELP),
    issue: Optional[str] = typer.Option(None, "--issue", help="What you are seeing, e.g. 'model not converging'."),
    fail_on: Optional[Severity] = typer.Option(
        None, "--fail-on", help="Exit 1 when a finding reaches this severity (for CI)."
    ),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="Per-layer statistics every N steps (default: adaptive)."),
    level: Optional[Level] = typer.Option(None, "--level", help=LEVEL_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    lm_api_base: Optional[str] = typer.Option(None, "--lm-api-base", help=LM_API_BASE_HELP),
    rules: Optional[List[Path]] = typer.Option(None, "--rules", help=RULES_HELP),
    baseline: Optional[str] = typer.Option(None, "--baseline", help=BASELINE_HELP),
    export: Optional[List[str]] = typer.Option(None, "--export", help=EXPORT_HELP),
    alerts: Optional[Path] = typer.Option(None, "--alerts", help=ALERTS_HELP),
    stop_on: Optional[str] = typer.Option(None, "--stop-on", metavar="high|medium|KIND[,KIND]", help=STOP_ON_HELP),
    live_budget: Optional[float] = typer.Option(None, "--live-budget", help=LIVE_BUDGET_HELP),
) -> None:
    """Run a training script unmodified, watch it, and diagnose it.

    modeldebug run [OPTIONS] -- python train.py [ARGS...]

    Options left out take the project's settings ([tool.modeldebug] in pyproject.toml, or
    modeldebug.toml; `modeldebug config` shows them), else the defaults.
    """
    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    _run(command, json_out=json_out, html_out=html_out, issue=issue, fail_on=fail_on.value if fail_on else None,
         every=every, level=level.value if level else None, store=store, lm=lm, lm_api_base=lm_api_base,
         rules=rules or None, baseline=baseline, export=export, alerts=alerts, stop_on=stop_on,
         live_budget=live_budget)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    no_args_is_help=True,
)
def fix(
    ctx: typer.Context,
    steps: int = typer.Option(300, "--steps", min=2, help="Optimizer steps per window: the probe and every re-run stop there."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the probe's JSON report, with its `fixes`, here (- for stdout)."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write the probe's HTML report here, each verified fix next to its finding with the loss before and after."),
    max_candidates: int = typer.Option(4, "--max-candidates", min=1, help="Try at most this many candidate fixes."),
    store: Optional[Path] = typer.Option(None, "--store", help="Keep every window's run in this store (default: a temporary one)."),
) -> None:
    """Try the fixes for what a short run of the script finds, and say which one works.

    modeldebug fix [OPTIONS] -- python train.py [ARGS...]

    Runs the script watched for --steps optimizer steps, then once unfixed again (the noise) and
    once per candidate fix for its root findings, each applied without editing the script, from
    the same seeds. A fix is verified when its finding is gone, no new medium or high finding
    appears and the training loss at the end of the window is lower by more than noise. Exits 0
    unless the command or an option is wrong.
    """
    from modeldebug.cli_run import check_command

    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    _check_outputs(json_out=json_out, html_out=html_out)
    check_command(command)
    if html_out is not None:
        from modeldebug.errors import MissingExtraError
        from modeldebug.report.html import require_extra

        try:
            require_extra()  # before the windows run
        except MissingExtraError as exc:
            from rich.markup import escape

            _fail(escape(str(exc)))
    from modeldebug.fixes.show import print_session, progress
    from modeldebug.fixes.verify import run_fix

    out = _console(stderr=True)
    try:
        session = run_fix(command, steps=steps, max_candidates=max_candidates, store_path=store, on_window=progress(out))
    except ValueError as exc:
        from rich.markup import escape

        _fail(escape(str(exc)))
    print_session(session, out)
    if json_out is not None and session.report is not None:
        text = session.report.to_json()
        if str(json_out) == STDOUT:
            sys.stdout.write(text + "\n")
        else:
            json_out.write_text(text + "\n")
            out.print(f"report written to {json_out}")
    if html_out is not None and session.report is not None:
        from modeldebug.report.html import write_html

        write_html(session.report, html_out)
        out.print(f"report written to {html_out}", soft_wrap=True)


@app.command()
def runs(
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    limit: int = typer.Option(20, "--limit", min=1, help="Show at most this many runs."),
) -> None:
    """List the runs in the store, newest first."""
    from rich.table import Table

    with _open_store(store) as s:
        rows = s.list_runs(limit=limit)
        # The id is never cut (it is what `report` and `ask` take); the command folds instead.
        table = Table()
        table.add_column("id", no_wrap=True, min_width=max((len(r.id) for r in rows), default=2))
        for name in ("status", "steps", "duration", "findings"):
            table.add_column(name, no_wrap=True)
        table.add_column("command", overflow="fold")
        for info in rows:
            report = s.load_report(info.id)
            findings = "-" if report is None else str(len(report.findings))
            table.add_row(info.id, info.status, str(info.steps), f"{info.duration_s:.1f} s", findings, _shown_command(info.command))
    _console().print(table)


def _shown_command(command: List[str]) -> str:
    """The command as the user would type it: the interpreter by its name, not its full path."""
    if command and Path(command[0]).name.startswith("python"):
        command = [Path(command[0]).name, *command[1:]]
    return " ".join(command)


@app.command()
def report(
    run_ref: str = typer.Argument("latest", metavar="RUN_ID|latest", help=RUN_REF_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
    html_out: Optional[Path] = typer.Option(None, "--html", help=HTML_HELP),
    reanalyze: bool = typer.Option(False, "--reanalyze", help="Run the rules again on the stored evidence, with today's rules and settings."),
    rules: Optional[List[Path]] = typer.Option(None, "--rules", help=RULES_HELP + " Implies --reanalyze."),
    level: Optional[Level] = typer.Option(None, "--level", help="Diagnose at this analysis level. Implies --reanalyze."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help=BASELINE_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    lm_api_base: Optional[str] = typer.Option(None, "--lm-api-base", help=LM_API_BASE_HELP),
    export: Optional[List[str]] = typer.Option(None, "--export", help=EXPORT_HELP),
) -> None:
    """Show a stored run's report again (and write it as JSON); re-diagnose it without re-training."""
    from modeldebug.errors import MissingExtraError
    from modeldebug.pipeline import diagnose
    from modeldebug.report.terminal import print_report

    _check_outputs(json_out=json_out, html_out=html_out)
    targets = _export_targets(export)
    project, diagnose_with = _project_settings(
        {"store": store, "level": level.value if level else None, "rules": [str(r) for r in rules or []]}, baseline)
    reanalyze = reanalyze or bool(rules) or level is not None
    lm_settings = _lm_settings(lm, lm_api_base)
    saves = reanalyze or lm_settings is not None  # what was computed again is kept; else nothing is written
    with _open_store(Path(project["store"]), read_only=not saves) as s:
        run_id = _resolve(s, run_ref)
        try:
            # The store keeps the rules' report and, beside it, the latest LM analysis, shown with it.
            diagnosis = diagnose(s, run_id, reuse_saved=not reanalyze, stored_llm=True, lm=lm_settings,
                                 save=saves, json_out=json_out, html_out=html_out,
                                 level=level.value if level else None, **diagnose_with)
        except MissingExtraError as exc:
            from rich.markup import escape

            _fail(escape(str(exc)))  # the message names the extra in brackets, which rich would take for markup
    rep, written = diagnosis.report, diagnosis.written
    print_report(rep, _console(stderr=_is_stdout(json_out)), issue=rep.metrics.issue, written=written)
    _print_llm(rep, _console(stderr=True))
    _export_and_tell(rep, targets)


@app.command("config")
def show_config(
    json_out: bool = typer.Option(False, "--json", help="Print the settings as JSON."),
) -> None:
    """Print the settings in force here and where each came from (default, or the configuration file)."""
    from rich.markup import escape
    from rich.table import Table

    from modeldebug.findings import jsonable

    project, _ = _project_settings({})
    rows = {key: {"value": jsonable(_plain(s.value)), "source": s.source} for key, s in project.values.items()}
    if json_out:
        sys.stdout.write(json.dumps({"file": str(project.file) if project.file else None, "settings": rows}, indent=2) + "\n")
        return
    out = _console()
    where = str(project.file) if project.file else "none found (modeldebug.toml, or [tool.modeldebug] in pyproject.toml)"
    out.print(f"configuration file: {escape(where)}")
    table = Table()
    for name in ("setting", "value", "from"):
        table.add_column(name, overflow="fold")
    for key, row in rows.items():
        table.add_row(key, escape(json.dumps(row["value"])), escape(row["source"]))
    out.print(table)


def _plain(value):
    """Settings as JSON values (suppressions are models)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value


def _is_stdout(path: Optional[Path]) -> bool:
    """The JSON goes to stdout: the terminal report moves to stderr, out of its way."""
    return path is not None and str(path) == STDOUT


@app.command()
def ask(
    run_ref: str = typer.Argument(..., metavar="RUN_ID|latest", help=RUN_REF_HELP),
    question: str = typer.Argument(..., help='e.g. "why does the loss go flat after epoch 3?"'),
    lm: Optional[str] = typer.Option(None, "--lm", help=LM_HELP),
    lm_api_base: Optional[str] = typer.Option(None, "--lm-api-base", help=LM_API_BASE_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Ask a question about a stored run (an LM agent reads its numbers; without --lm, the matching findings)."""
    from rich.markup import escape

    from modeldebug.llm.chat import ask as ask_run
    from modeldebug.pipeline import evaluate

    lm_settings = _lm_settings(lm, lm_api_base)
    with _open_store(store) as s:
        run_id = _resolve(s, run_ref)
        evidence = s.load_evidence(run_id)
        rep = s.load_report(run_id) or evaluate(evidence)  # the measured findings: what AskRun promises
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
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report with this one finding as JSON here (- for stdout)."),
) -> None:
    """Explain a crash from its saved traceback: the cause, the layer, and the fix."""
    from modeldebug.diagnose import diagnose_text, not_a_traceback
    from modeldebug.pipeline import write_outputs
    from modeldebug.report.terminal import print_report
    from modeldebug.types import Report, RunInfo

    _check_outputs(json_out=json_out)
    if traceback_file == "-":
        text = sys.stdin.read()
    else:
        path = Path(traceback_file)
        if not path.is_file():
            _fail(f"No traceback file at {path}: save the error output first (python train.py 2> traceback.txt).")
        text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        _fail(f"{traceback_file} is empty: expected a Python traceback or an error message.")
    refused = not_a_traceback(text)
    if refused:
        from rich.markup import escape

        name = "stdin" if traceback_file == "-" else traceback_file
        _fail(escape(f"{name} {refused}: expected a Python traceback or an error message (python train.py 2> traceback.txt)."))
    rep = Report(run=RunInfo(id="explain", status="completed"), findings=[diagnose_text(text)])
    title = "explain " + ("stdin" if traceback_file == "-" else traceback_file)
    print_report(rep, _console(stderr=_is_stdout(json_out)), written=write_outputs(rep, json_out=json_out), title=title)


@contextmanager
def _open_store(path: Optional[Path], read_only: bool = True):
    """An existing run store (read-only unless the command saves; None: the project's), closed on exit;
    a store that cannot be used, now or halfway through (damage in the middle of the file), is a
    one-line error that says what to do."""
    from rich.markup import escape

    from modeldebug.store import RunStore, StoreError

    if path is None:
        path = Path(_project_settings({})[0]["store"])
    if not path.exists():
        _fail(escape(f"No run store at {path}: run `modeldebug run -- python train.py` first."), 1)
    try:
        with RunStore(path, read_only=read_only) as store:
            yield store
    except StoreError as exc:
        _fail(escape(str(exc)), 1)


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
    from modeldebug.cli_run import main as run_main

    if run_main(sys.argv[1:]):
        return
    _mount_subcommands()
    app()


if __name__ == "__main__":
    main()
