"""The `modeldebug` command line: argument parsing only; the work lives in the library."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="modeldebug",
    help="Debug PyTorch training runs and ONNX models: find what is wrong and how to fix it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _mount_subcommands() -> None:
    # Sub-apps import their heavy dependencies lazily, inside their commands.
    from modeldebug.onnx.cli import onnx_app

    app.add_typer(onnx_app, name="onnx", help="Check, profile, find NaN in, and compare ONNX models.")


def main() -> None:
    _mount_subcommands()
    app()


if __name__ == "__main__":
    main()
