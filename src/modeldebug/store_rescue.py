"""`modeldebug run` never loses the run it records because the run store is bad (issue 16).

A store that cannot be opened or written when the run starts (damaged, a directory, a newer
layout, someone else's database, a read-only directory) is left alone: the run is recorded in a
fresh side store next to it (or in the temporary directory), and the user is told where. Damage
found only when the run ends (in the middle of the file) is met by copying the run's readable rows
into a side store and diagnosing it there. Standard library only: this runs before the script.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from modeldebug.store import RunStore, StoreError, side_path
from modeldebug.store_schema import SPECS, read_views

T = TypeVar("T")
log = logging.getLogger("modeldebug.store")
CHUNK_ROWS = 4096  # rowids read at a time once a table's rows cannot be read in one go


def start_run(path: str | os.PathLike, info: dict[str, Any], settings: dict[str, Any]) -> Path:
    """Create the run in the store at ``path``, or, when that store cannot take it, in a side store
    (said on stderr); the path the run is recorded in."""
    path = Path(path)
    try:
        with RunStore(path) as store:
            store.create_run(info, settings)
        return path
    except StoreError as exc:
        side = side_path(path, info["id"])
        if "store_path" in settings:
            settings["store_path"] = str(side)
        with RunStore(side) as store:
            store.create_run(info, settings)
        _say(exc, side, "This run is recorded")
        return side


def finish_run(path: str | os.PathLike, run_id: str, info: dict[str, Any], finish: Callable[[Path], T]) -> T:
    """``finish(path)`` (close the run, diagnose it, save and write the report); when the store fails
    on the way (or the run's process moved the run to a side store), the run's readable rows are copied to a side store and ``finish`` runs there."""
    path = Path(path)
    side = side_path(path, run_id)
    if side.exists() and side != path:  # the run's process met the damage and moved the run there
        _say(f"{path} is damaged: the run moved to a side store while it ran", side, "This run is recorded")
        return finish(side)
    try:
        return finish(path)
    except StoreError as exc:
        side = side_path(path, run_id)
        lost = copy_run(path, run_id, side, info)
        _say(exc, side, "What could be read of this run was copied" + (f" (unreadable: {', '.join(lost)})" if lost else ""))
        return finish(side)


def divert(store: RunStore, run_id: str, cause: StoreError) -> bool:
    """Move ``store`` off its damaged file to a side store with the run's readable rows copied (once;
    not for a store in memory or read-only). True when the store now writes there."""
    if store.path is None or store.read_only or store.diverted_from is not None or os.getpid() != store._pid:
        return False
    with store._lock:
        side = side_path(store.path, run_id)
        damaged, conn = store.path, store._conn
        try:
            copy_run(damaged, run_id, side, {"id": run_id, "status": "running"})
            store.path = side
            store._conn = store._open()
        except (StoreError, sqlite3.Error, OSError) as exc:
            store.path, store._conn = damaged, conn
            log.error("Run store %s is damaged and run %s could not move to %s: %s", damaged, run_id, side, exc)
            return False
        store.diverted_from = damaged
        if conn is not None:
            conn.close()
    log.warning("%s\nRun %s goes on in %s.", cause, run_id, side)
    return True


def copy_run(source: Path, run_id: str, side: Path, info: dict[str, Any]) -> list[str]:
    """Copy one run's row and rows from a damaged store into a new store at ``side``; the parts
    that could not be read (``info`` stands in for an unreadable run row)."""
    lost: list[str] = []
    try:
        conn = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        conn = None
    try:
        if conn is not None:
            try:
                conn.execute("PRAGMA temp_store=MEMORY")
                for view in read_views(conn):
                    conn.execute(view)
            except sqlite3.Error:
                pass
        row = _read(conn, "SELECT info, config, meta FROM runs WHERE id = ?", (run_id,))
        if row:
            saved_info, config, meta = row[0]
        else:
            lost.append("the run's record")
            saved_info, config, meta = json.dumps(info), None, "{}"
        with RunStore(side) as store:
            store.create_run({**info, **_loads(saved_info)}, _loads(config) or None)
            with store._write() as out:
                out.execute("UPDATE runs SET meta = ? WHERE id = ?", (meta or "{}", run_id))
                for spec in SPECS:
                    rows = _rows(conn, spec, run_id)
                    if rows is None:
                        lost.append(spec.table)
                        continue
                    out.executemany(spec.insert, rows)
    finally:
        if conn is not None:
            conn.close()
    return lost


def _rows(conn: sqlite3.Connection | None, spec, run_id: str) -> list[tuple] | None:
    """The run's rows of one table ((run_id, *fields) as inserted); past damaged pages chunk by chunk
    (None when nothing could be read)."""
    select = spec.select.replace("SELECT ", "SELECT run_id, ", 1)
    rows = _read(conn, select, (run_id,))
    if rows is not None:
        return rows
    top = _read(conn, f"SELECT MAX(rowid) FROM {spec.table}", ())
    if not top or top[0][0] is None:
        return None
    found, readable = [], False
    where = f"WHERE run_id = ? AND rowid BETWEEN ? AND ? "
    chunked = select.replace("WHERE run_id = ? ", where, 1)
    for start in range(0, top[0][0] + 1, CHUNK_ROWS):
        chunk = _read(conn, chunked, (run_id, start, start + CHUNK_ROWS - 1))
        if chunk is not None:
            readable = True
            found += chunk
    return found if readable else None


def _read(conn: sqlite3.Connection | None, sql: str, args: tuple) -> list[tuple] | None:
    if conn is None:
        return None
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error:
        return None


def _loads(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _say(exc: StoreError | str, side: Path, what: str) -> None:
    sys.stderr.write(f"modeldebug: {exc}\n  {what} in {side} instead: see it with "
                     f"`modeldebug report --store {side}`.\n")
    sys.stderr.flush()
