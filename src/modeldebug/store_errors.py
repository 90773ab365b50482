"""What can be wrong with a run store, said with what to do about it; where a run goes instead."""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path

from modeldebug.errors import DebuggingError

BUSY_TIMEOUT_S = 10.0


class StoreError(DebuggingError):
    """The run store cannot be used; ``kind`` says why (damaged, newer, foreign, incompatible, empty,
    missing, directory, locked, unwritable, closed, other) and the message says what to do."""

    def __init__(self, message: str, kind: str, path: str, error: str = ""):
        super().__init__(message, type="monitoring", details={"path": path, "kind": kind, "error": error})
        self.kind = kind
        self.path = path


def side_path(path: str | os.PathLike, run_id: str) -> Path:
    """Where a run goes when its store is bad: beside the store when that directory is writable,
    else in the temporary directory (the run's process and `modeldebug run` name the same file)."""
    import tempfile

    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        folder = Path(tempfile.gettempdir())
    return folder / f"{path.stem or 'runs'}-{run_id}.db"


def _ours(exc: sqlite3.Error) -> bool:
    """A mistake in our SQL or a constraint we broke, not a fault of the file: raised as it is."""
    return isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError))


def _damaged(text: str) -> bool:
    return any(s in text for s in ("not a database", "malformed", "disk I/O error", "file is encrypted"))


def store_error(where: str, cause: Exception | str, detail: str = "") -> StoreError:
    """The StoreError for a sqlite error or a kind of problem found: what is wrong and what to do."""
    aside = f"move it aside (`mv {where} {where}.bad`) or point modeldebug at another file with --store"
    text = detail if isinstance(cause, str) else str(cause)
    kind = cause if isinstance(cause, str) else (
        "damaged" if _damaged(text) else "locked" if "locked" in text or "busy" in text
        else "unwritable" if "readonly" in text or "read-only" in text or "unable to open" in text else "other")
    messages = {
        "damaged": f"{where} is not a readable modeldebug run store ({text}). Move it aside (e.g. `mv {where} "
                   f"{where}.bad`) and run again, or use --store for another file: a new store will be created.",
        "newer": f"{where} was written by a newer modeldebug ({text}). Upgrade modeldebug to read it, or use "
                 "--store for another file.",
        "foreign": f"{where} is not a modeldebug run store ({text}); modeldebug leaves it as it is. Use --store "
                   "to name a modeldebug store (or a new file).",
        "incompatible": f"{where} has a layout this modeldebug cannot write ({text}): {aside}.",
        "empty": f"No runs recorded in {where} yet: run your training under modeldebug first.",
        "missing": f"No run store at {where}: run `modeldebug run -- python train.py` first.",
        "directory": f"{where} is a directory, not a run store file: {aside}.",
        "locked": f"{where} stayed locked by another process for over {BUSY_TIMEOUT_S:.0f} s ({text}). "
                  "Wait for that process to finish, or point this run at another store file.",
        "unwritable": f"Could not open the run store {where} ({text}). Check that the path is a writable file "
                      "location, or use --store for another file.",
    }
    message = messages.get(kind, f"The run store {where} failed ({text}).")
    return StoreError(message, kind, where, text)


def _diverting(method):
    """A write that finds the file damaged (in the middle: it opened) moves the run to a side store
    (:meth:`RunStore._divert`) and is done there: the run being recorded is not lost."""

    @functools.wraps(method)
    def write(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError as exc:
            run_id = args[0] if args and isinstance(args[0], str) else next(iter(self._pending_runs()), None)
            if exc.kind != "damaged" or run_id is None or not self._divert(run_id, exc):
                raise
            return method(self, *args, **kwargs)

    return write


# --- the store ---------------------------------------------------------------------------------
