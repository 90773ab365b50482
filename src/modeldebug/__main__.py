"""``python -m modeldebug`` and the ``modeldebug`` entry point.

`modeldebug run` in its plain form starts the script without importing typer (see
:mod:`modeldebug.cli_run`); everything else goes to the typer app in :mod:`modeldebug.cli`.
"""

import sys


def main() -> None:
    from modeldebug.cli_run import main as run_main

    if not run_main(sys.argv[1:]):
        from modeldebug.cli import main as cli_main

        cli_main()


if __name__ == "__main__":
    main()
