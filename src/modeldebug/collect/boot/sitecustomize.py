"""Put first on PYTHONPATH by `modeldebug run`: start watching, then run the sitecustomize this shadows.

Kept minimal: it runs at every start of every Python process the script starts, so it imports
modeldebug's small post-import hook only when this process is asked to be watched, and the
collector itself loads only once the script imports torch (see ``collect.autopatch``).
"""

import os
import sys

if os.environ.get("MODELDEBUG_RUN"):
    try:
        from modeldebug.collect.autopatch import install_from_env
    except ImportError as exc:  # a different interpreter than the one modeldebug is installed in
        sys.stderr.write(
            f"modeldebug: cannot watch this process ({exc}); run the script with the Python "
            f"environment modeldebug is installed in ({os.environ.get('MODELDEBUG_PYTHON', 'see `which modeldebug`')}).\n"
        )
    else:
        install_from_env()


def _run_shadowed() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.machinery.PathFinder.find_spec(
        "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here]
    )
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_run_shadowed()
del _run_shadowed
