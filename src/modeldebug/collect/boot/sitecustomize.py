"""Put first on PYTHONPATH by `modeldebug run`: start watching, then run the sitecustomize this shadows."""

import importlib.machinery
import importlib.util
import os
import sys

try:
    from modeldebug.collect.autopatch import install_from_env
except ImportError as exc:  # a different interpreter than the one modeldebug is installed in
    if os.environ.get("MODELDEBUG_RUN"):
        sys.stderr.write(
            f"modeldebug: cannot watch this process ({exc}); run the script with the Python "
            f"environment modeldebug is installed in ({os.environ.get('MODELDEBUG_PYTHON', 'see `which modeldebug`')}).\n"
        )
else:
    install_from_env()

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
