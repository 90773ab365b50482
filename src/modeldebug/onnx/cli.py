"""`modeldebug onnx check|profile|nan|compare`: argument parsing and terminal output only.

Exit codes: 0 done (findings or not), 1 findings at or above ``--fail-on``, 2 bad input (a file
that is not a readable ONNX model, a missing extra, bad arguments): one line on stderr, no traceback.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer

if TYPE_CHECKING:  # mounted on the main CLI: `modeldebug run` must not import pydantic through here
    from modeldebug.metrics import OnnxCheckMetrics, OnnxCompareMetrics, OnnxNanMetrics, OnnxProfileMetrics
    from modeldebug.types import Report

onnx_app = typer.Typer(
    name="onnx",
    help="Check, profile, find NaN in, and compare ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = typer.Option(None, "--json", help="Write the report (JSON, schema modeldebug.report/1) to this path.")
FailOpt = typer.Option(None, "--fail-on", help="Exit with 1 when a finding reaches this severity: high, medium or low.")
ProviderOpt = typer.Option(None, "--provider", "-p", help="onnxruntime execution provider (repeatable); default CPUExecutionProvider.")
InputsOpt = typer.Option(
    None, "--inputs", help="Inputs as .npz (arrays named after the model's inputs) or .npy (single-input models); random when omitted."
)


def _guard(fn: Callable) -> Callable:
    """Turn the errors a user can fix into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from modeldebug.errors import DebuggingError, MissingExtraError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (DebuggingError, MissingExtraError, ValueError, TypeError, FileNotFoundError, OSError) as exc:
            typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@onnx_app.command()
@_guard
def check(
    model: Path = typer.Argument(..., help="The .onnx file."),
    shapes: bool = typer.Option(True, "--shapes/--no-shapes", help="Run strict shape inference with data propagation."),
    provider: Optional[List[str]] = ProviderOpt,
    json_path: Optional[Path] = JsonOpt,
    fail_on: Optional[str] = FailOpt,
) -> None:
    """Validate a model: ONNX checker, strict shape inference, operators the runtime lacks, graph facts."""
    from modeldebug.onnx.check import analyze_model

    report = analyze_model(str(model), check_shapes=shapes, providers=provider or None)
    if not report.metrics.loadable:  # not a model at all: bad input, not a finding to render
        if json_path is not None:
            _write_json(report, json_path)
        typer.echo(f"error: {report.findings[0].message}", err=True)
        raise typer.Exit(2)
    _finish(report, json_path, fail_on, _summary_check)


@onnx_app.command()
@_guard
def profile(
    model: Path = typer.Argument(..., help="The .onnx file."),
    iterations: int = typer.Option(100, "--iterations", "-n", help="Profiled runs."),
    warmup: int = typer.Option(5, "--warmup", help="Runs before profiling starts."),
    level: str = typer.Option("all", "--level", help="Graph optimization level you deploy with: disable, basic, extended, all."),
    inputs: Optional[Path] = InputsOpt,
    provider: Optional[List[str]] = ProviderOpt,
    json_path: Optional[Path] = JsonOpt,
    fail_on: Optional[str] = FailOpt,
) -> None:
    """Time every node with onnxruntime's profiler; report per-op-type and per-node time and the nodes that dominate."""
    from modeldebug.onnx.profile import profile_execution

    report = profile_execution(
        str(model), inputs=_load_inputs(inputs), warmup=warmup, iterations=iterations, providers=provider or None, optimization_level=level
    )
    _finish(report, json_path, fail_on, _summary_profile)


@onnx_app.command()
@_guard
def nan(
    model: Path = typer.Argument(..., help="The .onnx file."),
    inputs: Optional[Path] = InputsOpt,
    provider: Optional[List[str]] = ProviderOpt,
    json_path: Optional[Path] = JsonOpt,
    fail_on: Optional[str] = FailOpt,
) -> None:
    """Find the first node whose output holds NaN or Inf while its inputs do not, and values beyond the fp16 range."""
    from modeldebug.onnx.nan import find_nonfinite

    report = find_nonfinite(str(model), inputs=_load_inputs(inputs), providers=provider or None)
    _finish(report, json_path, fail_on, _summary_nan)


@onnx_app.command()
@_guard
def compare(
    source: str = typer.Argument(
        ...,
        help="The PyTorch source as FILE.py:FACTORY or package.module:FACTORY. FACTORY() returns the nn.Module, "
        "or a tuple (module, example_inputs).",
    ),
    onnx_model: Optional[Path] = typer.Option(None, "--onnx", help="The exported .onnx file; exported here when omitted."),
    inputs: Optional[Path] = typer.Option(
        None, "--inputs", help="Example inputs: a .pt file (a tensor or tuple of tensors) or .npz (arrays in input order)."
    ),
    shape: Optional[List[str]] = typer.Option(
        None, "--shape", help="Random float32 example input of this shape, e.g. 1,3,224,224 (repeatable, one per input)."
    ),
    rtol: float = typer.Option(1e-3, "--rtol", min=0.0, help="Relative tolerance: a point matches when |onnx - torch| <= atol + rtol * |torch|."),
    atol: float = typer.Option(1e-5, "--atol", min=0.0, help="Absolute tolerance (see --rtol)."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.onnx.export(dynamo=True)) or torchscript."),
    json_path: Optional[Path] = JsonOpt,
    fail_on: Optional[str] = FailOpt,
) -> None:
    """Compare a PyTorch module with its ONNX export, module by module, and name the first one that diverges.

    Example inputs come from the factory's return value, else from --inputs, else from --shape.
    The module is used as the factory returns it (call .eval() there; a module left in train mode is
    itself a finding).
    """
    from modeldebug.onnx.compare import compare_with_torch

    module, example = _load_source(source)
    if inputs is not None:
        example = _load_example(inputs)
    elif shape:
        import torch

        gen = torch.Generator().manual_seed(0)
        example = tuple(torch.randn(*[int(d) for d in s.split(",")], generator=gen) for s in shape)
    if example is None:
        raise ValueError("No example inputs: return (module, inputs) from the factory, or pass --inputs or --shape.")
    report = compare_with_torch(
        module, example, onnx_model=str(onnx_model) if onnx_model else None, rtol=rtol, atol=atol, exporter=exporter
    )
    report.run.command = ["modeldebug", "onnx", "compare", source] + (["--onnx", str(onnx_model)] if onnx_model else [])
    _finish(report, json_path, fail_on, _summary_compare)


# --- inputs ----------------------------------------------------------------------------------------


def _load_inputs(path: Optional[Path]) -> Any:
    if path is None:
        return None
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    if path.suffix == ".npy":
        return [np.load(path)]
    raise ValueError(f"Expected --inputs to be a .npz or .npy file but got {path.name}.")


def _load_example(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".npz":
        import numpy as np
        import torch

        with np.load(path) as data:
            return tuple(torch.from_numpy(data[k]) for k in data.files)
    if path.suffix in (".pt", ".pth"):
        import torch

        return torch.load(path, weights_only=True)
    raise ValueError(f"Expected --inputs to be a .pt or .npz file but got {path.name}.")


def _load_source(spec: str) -> tuple[Any, Any]:
    """Import FILE.py:FACTORY or package.module:FACTORY and call the factory."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"Expected the source as FILE.py:FACTORY or module:FACTORY but got {spec!r}.")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        mod_spec = importlib.util.spec_from_file_location(f"_modeldebug_source_{path.stem}", path)
        mod = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(path.parent.resolve()))  # let the file import its neighbours
        try:
            mod_spec.loader.exec_module(mod)
        finally:
            sys.path.pop(0)
    else:
        mod = importlib.import_module(target)
    factory = getattr(mod, attr, None)
    if factory is None:
        raise ValueError(f"{target} has no attribute {attr!r}.")
    made = factory() if callable(factory) and not hasattr(factory, "named_modules") else factory
    if isinstance(made, tuple) and len(made) == 2 and hasattr(made[0], "named_modules"):
        return made[0], made[1]
    if not hasattr(made, "named_modules"):
        raise TypeError(f"Expected {spec} to give a torch.nn.Module or (module, inputs) but got {type(made).__name__}.")
    return made, None


# --- output ----------------------------------------------------------------------------------------


def _finish(report: Report, json_path: Optional[Path], fail_on: Optional[str], summary: Callable) -> None:
    from modeldebug.types import SEVERITY_ORDER

    if fail_on is not None and fail_on not in SEVERITY_ORDER:
        raise ValueError(f"Expected --fail-on to be high, medium or low but got {fail_on!r}.")
    if json_path is not None:
        _write_json(report, json_path)
    _print(report, summary)
    if fail_on is not None and any(SEVERITY_ORDER[f.severity] <= SEVERITY_ORDER[fail_on] for f in report.findings):
        raise typer.Exit(1)


def _write_json(report: Report, path: Path) -> None:
    from modeldebug.pipeline import write_json  # one writer of report files for every command

    write_json(report, path)


def _print(report: Report, summary: Callable) -> None:
    from rich.console import Console

    console = Console()
    summary(console, report.metrics)
    from modeldebug.report.terminal import print_report

    command = report.run.command  # ["modeldebug", "onnx", "check", ...]
    print_report(report, title=" ".join(command[1:3]) if command[1:2] == ["onnx"] else "onnx")


def _summary_check(console, m: OnnxCheckMetrics) -> None:
    if not m.loadable:
        return
    console.print(
        f"IR version {m.ir_version}, opsets {m.opsets}, {m.node_count} nodes, "
        f"{m.parameter_count:,} parameters, producer '{m.producer}'",
        highlight=False,
    )
    for key, label in (("dynamic_axes", "dynamic axes"), ("inputs_without_shape", "inputs without shape"),
                       ("unused_inputs", "unused inputs"), ("unused_initializers", "unused initializers")):
        value = getattr(m, key)
        if value:
            shown = value if isinstance(value, dict) else (value[:10] + (["..."] if len(value) > 10 else []))
            console.print(f"{label}: {shown}", highlight=False, markup=False)


def _summary_profile(console, m: OnnxProfileMetrics) -> None:
    from rich.table import Table

    lat = m.latency_ms
    console.print(
        f"latency: median {lat.median:.3f} ms, p90 {lat.p90:.3f} ms over {m.iterations} runs "
        f"({m.optimization_level} optimizations, {', '.join(m.providers)}{', random inputs' if m.random_inputs else ''})",
        highlight=False,
    )
    ops = Table("op type", "nodes", "ms/run", "share", title="time per op type")
    for row in m.op_types[:10]:
        ops.add_row(row.op_type, str(row.nodes), f"{row.mean_us / 1000:.3f}", f"{row.share:.1%}")
    console.print(ops)
    nodes = Table("node", "op type", "ms/run", "share", title="slowest nodes")
    for row in m.top_nodes[:10]:
        nodes.add_row(row.node, row.op_type, f"{row.mean_us / 1000:.3f}", f"{row.share:.1%}")
    console.print(nodes)


def _summary_nan(console, m: OnnxNanMetrics) -> None:
    console.print(
        f"{m.values_checked} values checked, {m.nonfinite_value_count} hold NaN/Inf"
        + (f"; first produced by {m.first_node}" if m.first_node else "")
        + (" (random inputs)" if m.random_inputs else ""),
        highlight=False,
        markup=False,
    )


def _summary_compare(console, m: OnnxCompareMetrics) -> None:
    from rich.table import Table

    console.print(
        f"{m.matched_points} matched points ({m.exporter} export), rtol={m.tolerances.rtol:g}, "
        f"atol={m.tolerances.atol:g}; timings {m.timing_s}",
        highlight=False,
        markup=False,
    )
    points = m.points
    first_bad = next((i for i, p in enumerate(points) if not p.ok), None)
    shown = points if len(points) <= 12 else points[max(0, (first_bad or len(points)) - 6) : (first_bad or len(points)) + 6]
    table = Table("module", "type", "onnx node", "max abs", "max rel", "ok")
    for p in shown:
        table.add_row(p.module or "(top level)", p.module_type, p.onnx_node, f"{p.max_abs:.3g}", f"{p.max_rel:.3g}", "yes" if p.ok else "[red]NO[/]")
    for o in m.outputs:
        table.add_row(f"output {o.output}", "", o.value, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", "yes" if o.ok else "[red]NO[/]")
    console.print(table)
