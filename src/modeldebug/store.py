"""SQLite run store: what the collector saw during a run, and the reports made from it.

One file per project directory (``.modeldebug/runs.db``), stdlib ``sqlite3`` in WAL mode:

- Rows are buffered in memory and written in one transaction per batch (``flush``), so a
  training step never waits on the disk, and a process killed with SIGKILL loses at most its
  last unflushed batch: committed batches are in the WAL and the file stays intact.
- WAL lets another process (``modeldebug report`` while training runs) read a consistent
  snapshot while the writer goes on; several processes may write different runs to one file
  (each write waits up to ``BUSY_TIMEOUT_S`` for the lock).
- Row tables are generated from the record dataclasses in ``modeldebug.records``
  (:mod:`modeldebug.store_schema`): a new field is a new column, and an older file gets it through
  ``ALTER TABLE`` when opened.
- ``runs.report`` holds the rules' report. What a language model said about a run (its summary,
  ranking, explanations, recommendations and the findings it added, all marked as its own) is a
  row of ``llm_analyses`` next to it, kept as opaque JSON: splitting an enriched report in two
  and applying an analysis again is the LM layer's work (:mod:`modeldebug.llm.analysis`).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from modeldebug.errors import DebuggingError
from modeldebug.store_errors import (  # noqa: F401  StoreError, side_path: re-exported
    BUSY_TIMEOUT_S,
    StoreError,
    _diverting,
    _ours,
    side_path,
    store_error,
)
from modeldebug.store_schema import (  # noqa: F401  LLMAnalysisRecord: re-exported, the LM layer's record
    SPEC_BY_TABLE,
    SPEC_BY_TYPE,
    SPECS,
    LLMAnalysisRecord,
    from_dict,
    json_default,
    layout_problem,
    plain_rows,
    read_views,
    schema_changes,
)

if TYPE_CHECKING:
    from modeldebug.config import DebuggingConfig
    from modeldebug.evidence import Evidence
    from modeldebug.records import LayerInfo, OptimizerInfo, ParamInfo
    from modeldebug.types import Report, RunInfo

# numpy, pydantic (the report models) and Evidence are imported where they are used: creating a
# store and a run needs only sqlite3, so `modeldebug run` starts the script without loading them.

log = logging.getLogger(__name__)

DEFAULT_PATH = ".modeldebug/runs.db"
MAX_PENDING_BATCHES = 64  # rows kept for retry when writes fail, in units of flush_rows
RUNS_HINT = "list runs with `modeldebug runs`"


class RunStore:
    """Runs, their per-step rows, metadata and reports in one SQLite file (or in memory).

    Usable from several threads (one lock around the connection) and as a context manager.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = DEFAULT_PATH,
        *,
        flush_rows: int = 512,
        flush_interval_s: float = 1.0,
        read_only: bool = False,
    ):
        """``read_only``: open an existing store with SQLite's mode=ro (what `runs` and `report` do):
        nothing is created or changed, a file that is not a modeldebug store is refused."""
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, got {flush_rows}")
        if read_only and path is None:
            raise ValueError("An in-memory run store cannot be opened read-only.")
        self.path = None if path is None else Path(path)
        self.read_only = read_only
        self.diverted_from: Path | None = None  # the damaged store this one's runs moved away from
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        self._lock = threading.RLock()
        self._pending: dict[str, list[tuple]] = {}
        self._pending_count = 0
        self._last_flush = time.monotonic()
        self._retry_at = 0.0  # after a failed write, automatic flushes wait until then
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = self._open()
        # Buffered rows survive a normal interpreter exit even if the caller forgets close().
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    @property
    def _where(self) -> str:
        return "the in-memory run store" if self.path is None else str(self.path)

    def _open(self) -> sqlite3.Connection:
        conn = None
        try:
            if self.path is not None and self.path.is_dir():
                raise self._error("directory")
            if self.read_only:
                conn = self._connect_read_only()
            else:
                if self.path is not None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
                conn = sqlite3.connect(":memory:" if self.path is None else str(self.path), timeout=BUSY_TIMEOUT_S,
                                       isolation_level=None, check_same_thread=False)
                self._check_layout(conn)  # before WAL: someone else's database is left as it was
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: committed batches survive a killed process (not a power cut), and
                # commits do not wait for fsync.
                conn.execute("PRAGMA synchronous=NORMAL")
                self._ensure_schema(conn)
            return conn
        except (sqlite3.Error, OSError, StoreError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, StoreError):
                raise
            raise self._error(exc) from exc

    def _connect_read_only(self) -> sqlite3.Connection:
        assert self.path is not None
        if not self.path.exists():
            raise self._error("missing")
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA user_version")
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc):
                raise
            # A WAL file in a read-only directory, without its -shm: nobody can be writing it.
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
        try:
            self._check_layout(conn)
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
                raise self._error("empty")
            conn.execute("PRAGMA temp_store=MEMORY")
            for view in read_views(conn):  # an older file, read as this version's layout
                conn.execute(view)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_layout(self, conn: sqlite3.Connection) -> None:
        problem = layout_problem(conn)
        if problem is not None:
            raise self._error(*problem)

    def _error(self, cause: Exception | str, detail: str = "") -> StoreError:
        return store_error(self._where, cause, detail)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        # Look first without a write lock: a reader opening a store that is up to date writes nothing.
        if not schema_changes(conn):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in schema_changes(conn):  # again, under the lock: another process may have won
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # --- transactions ------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"The run store {self._where} is closed.", "closed", self._where)
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the lock up front so it cannot fail halfway on BUSY."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                if _ours(exc):
                    raise
                if self.read_only:
                    raise StoreError(f"The run store {self._where} was opened read-only; nothing is saved.",
                                     "read_only", self._where, str(exc)) from exc
                error = self._error(exc)
                error.args = (f"Could not write to the run store {self._where} ({exc})." if error.kind == "other"
                              else f"Could not write to the run store: {error}",)
                raise error from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot, even while a writer commits."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if _ours(exc):
                    raise
                raise self._error(exc) from exc

    # --- runs --------------------------------------------------------------------------------

    def create_run(self, info: RunInfo | dict[str, Any], config: DebuggingConfig | dict[str, Any] | None = None) -> str:
        """Add a run. ``info`` and ``config`` may also be plain dicts of RunInfo's and DebuggingConfig's
        fields (how `modeldebug run` creates the run before the script starts, without importing
        pydantic); they are validated when read back, like everything in the store."""
        if isinstance(info, dict):
            info = {**info, "started_at": info.get("started_at") or time.time()}
            run_id, started_at, info_json = info["id"], info["started_at"], json.dumps(info)
        else:
            if info.started_at is None:
                info = info.model_copy(update={"started_at": time.time()})
            run_id, started_at, info_json = info.id, info.started_at, info.model_dump_json()
        config_json = None if config is None else json.dumps(config) if isinstance(config, dict) else config.model_dump_json()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise ValueError(
                    f"A run with id {run_id!r} already exists in {self._where}; give the new run another id."
                )
            conn.execute(
                "INSERT INTO runs (id, started_at, info, config, meta) VALUES (?, ?, ?, ?, ?)",
                (run_id, started_at, info_json, config_json, "{}"),
            )
        return run_id

    @_diverting
    def update_run(self, run_id: str, **fields: Any) -> None:
        """Change RunInfo fields (status, exit_code, steps, duration_s, models, ...); validated as RunInfo."""
        if "id" in fields:
            raise ValueError("A run's id cannot change.")
        from modeldebug.types import RunInfo

        with self._lock:
            with self._write() as conn:
                (text,) = self._run_row(conn, run_id, "info")
                info = RunInfo.model_validate({**json.loads(text), **fields})
                conn.execute(
                    "UPDATE runs SET info = ?, started_at = ? WHERE id = ?",
                    (info.model_dump_json(), info.started_at, run_id),
                )
                # Rows buffered so far go in the same transaction: a run marked completed has all its rows.
                self._write_pending(conn)
            self._flushed()

    @_diverting
    def set_meta(
        self,
        run_id: str,
        *,
        layers: dict[str, LayerInfo] | None = None,
        params: dict[str, ParamInfo] | None = None,
        optimizers: list[OptimizerInfo] | None = None,
        class_counts: dict[int, int] | None = None,
    ) -> None:
        """Replace the given parts of the run's metadata; the parts not given stay as they were."""
        update: dict[str, Any] = {}
        if layers is not None:
            update["layers"] = {name: asdict(x) for name, x in layers.items()}
        if params is not None:
            update["params"] = {name: asdict(x) for name, x in params.items()}
        if optimizers is not None:
            update["optimizers"] = [asdict(x) for x in optimizers]
        if class_counts is not None:
            update["class_counts"] = {str(int(k)): int(v) for k, v in class_counts.items()}  # JSON keys are strings
        with self._write() as conn:
            (meta,) = self._run_row(conn, run_id, "meta")
            merged = {**json.loads(meta or "{}"), **update}
            conn.execute("UPDATE runs SET meta = ? WHERE id = ?", (json.dumps(merged, default=json_default), run_id))

    @_diverting
    def save_report(self, run_id: str, report: Report, *, analysis: dict[str, Any] | None = None) -> None:
        """Save the run's report (the rules' report: :func:`modeldebug.llm.analysis.save_report_with_analysis`
        splits an enriched one) and, given ``analysis``, a row of ``llm_analyses``, in one transaction."""
        with self._write() as conn:
            self._run_row(conn, run_id, "id")
            conn.execute("UPDATE runs SET report = ? WHERE id = ?", (report.to_json(indent=None), run_id))
            if analysis is not None:
                self._insert_analysis(conn, run_id, analysis)

    def load_report(self, run_id: str) -> Report | None:
        """The saved (rules') report, or None when the run has none yet
        (:func:`modeldebug.llm.analysis.load_report_with_analysis` adds the latest LM analysis)."""
        with self._read() as conn:
            (text,) = self._run_row(conn, run_id, "report")
        from modeldebug.types import Report

        if text is None:
            return None
        return Report.from_json(text)

    @_diverting
    def save_llm_analysis(self, run_id: str, analysis: dict[str, Any]) -> int:
        """Keep one LM analysis of the run (see :class:`LLMAnalysisRecord`); returns its id."""
        with self._write() as conn:
            self._run_row(conn, run_id, "id")
            return self._insert_analysis(conn, run_id, analysis)

    def llm_analyses(self, run_id: str) -> list[dict[str, Any]]:
        """Every LM analysis of the run, oldest first: id, created_at, model, status, issue, analysis."""
        spec = SPEC_BY_TYPE[LLMAnalysisRecord]
        with self._read() as conn:
            self._run_row(conn, run_id, "id")
            rows = conn.execute(spec.select.replace("SELECT ", "SELECT rowid, ", 1), (run_id,)).fetchall()
        out = []
        for rowid, *values in rows:
            (d,) = spec.dicts_from_rows([tuple(values)])
            out.append({"id": rowid, **d})
        return out

    @staticmethod
    def _insert_analysis(conn: sqlite3.Connection, run_id: str, analysis: dict[str, Any]) -> int:
        spec = SPEC_BY_TYPE[LLMAnalysisRecord]
        record = LLMAnalysisRecord(created_at=time.time(), model=str(analysis.get("model") or ""),
                                   status=str(analysis.get("status") or "ok"), issue=analysis.get("issue"),
                                   analysis=analysis)
        return conn.execute(spec.insert, spec.row(run_id, record)).lastrowid

    def list_runs(self, limit: int = 50, *, prefix: str | None = None) -> list[RunInfo]:
        """Runs newest first; with ``prefix``, only those whose id starts with it (a run and its ranks' runs)."""
        from modeldebug.types import RunInfo

        where, args = ("WHERE substr(id, 1, ?) = ? ", (len(prefix), prefix)) if prefix else ("", ())
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT id, info FROM runs {where}ORDER BY started_at DESC, rowid DESC LIMIT ?", (*args, limit)
            ).fetchall()
        runs = []
        for run_id, info in rows:
            try:
                runs.append(RunInfo.model_validate_json(info))
            except ValueError as exc:  # written by another version: list the others
                log.warning("Skipping run %s in %s: its info does not parse (%s)", run_id, self._where, exc)
        return runs

    def resolve(self, ref: str) -> str:
        """A full run id from "latest", a full id, or a unique prefix of one."""
        ref = ref.strip()
        with self._read() as conn:
            if ref == "latest":
                row = conn.execute("SELECT id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1").fetchone()
                if row is None:
                    raise ValueError(
                        f"No runs recorded in {self._where} yet: run your training under modeldebug first."
                    )
                return row[0]
            if not ref:
                raise ValueError(f"Give a run id, a prefix of one, or 'latest' ({RUNS_HINT}).")
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (ref,)).fetchone():
                return ref
            matches = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE substr(id, 1, ?) = ? ORDER BY started_at DESC LIMIT 6", (len(ref), ref)
                )
            ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ValueError(f"No run matches {ref!r} in {self._where}; {RUNS_HINT} to see the ids.")
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise ValueError(f"{ref!r} matches several runs ({shown}); give more characters of the id ({RUNS_HINT}).")

    def run_version(self, run_id: str) -> tuple:
        """Changes whenever the run does (its info, config, metadata or rows): equal versions mean the
        same evidence, for caches of what was computed from it."""
        self.flush()
        with self._read() as conn:
            version = [self._run_row(conn, run_id, "info, config, meta")]
            for spec in SPECS:
                if spec.record_type is not LLMAnalysisRecord:
                    version.append(conn.execute(f"SELECT COUNT(*), MAX(rowid) FROM {spec.table} WHERE run_id = ?",
                                                (run_id,)).fetchone())
        return tuple(version)

    def nonfinite_after(self, run_id: str, step: int) -> int | None:
        """The first step after ``step`` with a non-finite loss or gradient norm, or None (a cheap
        index range: the live diagnosis asks it several times a second)."""
        with self._read() as conn:
            (found,) = conn.execute("SELECT MIN(step) FROM steps WHERE run_id = ? AND step > ? AND "
                                    "(loss_nonfinite OR grad_nonfinite)", (run_id, step)).fetchone()
        return found

    def progress(self, run_id: str) -> tuple[int, float | None]:
        """(steps so far, the latest recorded loss) of a run another process is writing (nothing flushed)."""
        with self._read() as conn:
            (last,) = conn.execute("SELECT MAX(step) FROM steps WHERE run_id = ?", (run_id,)).fetchone()
            loss = conn.execute("SELECT loss FROM steps WHERE run_id = ? AND loss IS NOT NULL ORDER BY step DESC LIMIT 1",
                                (run_id,)).fetchone()
        return (0 if last is None else last + 1), (None if loss is None else loss[0])

    def _run_row(self, conn: sqlite3.Connection, run_id: str, columns: str) -> tuple:
        row = conn.execute(f"SELECT {columns} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"No run {run_id!r} in {self._where}; {RUNS_HINT} to see the ids.")
        return row

    def _divert(self, run_id: str, cause: StoreError) -> bool:
        """Go on in a fresh side store with the run's readable rows copied (once; not for a store in
        memory or read-only). True when the store now writes there."""
        from modeldebug.store_rescue import divert

        return divert(self, run_id, cause)

    def _pending_runs(self) -> list[str]:
        return list(dict.fromkeys(row[0] for rows in self._pending.values() for row in rows))

    # --- rows --------------------------------------------------------------------------------

    def add(self, run_id: str, record: Any) -> None:
        """Buffer one record; written at the next flush (automatic by row count or time)."""
        with self._lock:
            self._buffer(run_id, record)
            self._maybe_flush()

    def add_row(self, record_type: type, row: tuple) -> None:
        """``add`` of a row made without the record object (``records.row_maker``: an unsampled step's)."""
        with self._lock:
            self._pending.setdefault(SPEC_BY_TYPE[record_type].table, []).append(row)
            self._pending_count += 1
            self._maybe_flush()

    def add_many(self, run_id: str, records: Iterable[Any]) -> None:
        with self._lock:
            for record in records:
                self._buffer(run_id, record)
                if self._pending_count >= self._flush_rows:  # a long iterable is written as it goes
                    self._maybe_flush()
            self._maybe_flush()

    def _buffer(self, run_id: str, record: Any) -> None:
        spec = SPEC_BY_TYPE.get(type(record))
        if spec is None:
            expected = ", ".join(t.__name__ for t in SPEC_BY_TYPE)
            raise TypeError(f"Cannot store a {type(record).__name__}; expected one of {expected}")
        self._pending.setdefault(spec.table, []).append(spec.row(run_id, record))
        self._pending_count += 1

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now >= self._retry_at and (
            self._pending_count >= self._flush_rows or now - self._last_flush >= self._flush_interval_s
        ):
            self.flush()

    @_diverting
    def flush(self) -> None:
        """Write every buffered row in one transaction."""
        with self._lock:
            # A forked child (e.g. a DataLoader worker) must not write through its parent's connection.
            if os.getpid() != self._pid:
                return
            if self._pending_count:
                try:
                    with self._write() as conn:
                        self._write_pending(conn)
                except DebuggingError:
                    self._write_failed()
                    raise
            self._flushed()

    def _write_failed(self) -> None:
        # Each try can wait BUSY_TIMEOUT_S for the lock: automatic retries wait an interval so that
        # training is not stalled on every add(), and the buffer stays bounded if writes keep failing.
        self._retry_at = time.monotonic() + max(self._flush_interval_s, BUSY_TIMEOUT_S)
        if self._pending_count > MAX_PENDING_BATCHES * self._flush_rows:
            log.error(
                "Run store %s: dropping %d unwritten rows after repeated write failures",
                self._where,
                self._pending_count,
            )
            self._pending = {}
            self._pending_count = 0

    def _write_pending(self, conn: sqlite3.Connection) -> None:
        for table, rows in self._pending.items():
            spec = SPEC_BY_TABLE[table]
            rows = plain_rows(rows)
            conn.executemany(spec.insert, rows if spec.bind is None else map(spec.bind, rows))

    def _flushed(self) -> None:
        # Called only after COMMIT: a failed write keeps its rows for the next try.
        self._pending = {}
        self._pending_count = 0
        self._last_flush = time.monotonic()
        self._retry_at = 0.0

    # --- evidence ----------------------------------------------------------------------------

    def load_events(self, run_id: str) -> list[dict[str, Any]]:
        """One run's event rows ({"step", "type", "data"}), as ``Evidence.events`` holds them
        (read them typed with ``modeldebug.events.events_of``); no other table is read."""
        from modeldebug.records import EventRecord

        self.flush()
        spec = SPEC_BY_TYPE[EventRecord]
        with self._read() as conn:
            return spec.dicts_from_rows(conn.execute(spec.select, (run_id,)).fetchall())

    def load_evidence(self, run_id: str) -> Evidence:
        """Everything about one run as Evidence, this process's buffered rows included."""
        from modeldebug.evidence import Evidence, Table
        from modeldebug.records import LayerInfo, OptimizerInfo, ParamInfo
        from modeldebug.types import RunInfo

        self.flush()  # buffered rows are written first, so one query per table sees them all
        with self._read() as conn:
            info, config, meta = self._run_row(conn, run_id, "info, config, meta")
            tables = {}
            for spec in SPECS:
                if spec.record_type is LLMAnalysisRecord:  # not evidence: what an LM said about it
                    continue
                rows = conn.execute(spec.select, (run_id,)).fetchall()
                if spec.table == "events":
                    events = spec.dicts_from_rows(rows)
                else:
                    tables[spec.table] = Table(spec.columns_from_rows(rows))
                del rows  # free each table's Python rows before fetching the next
        meta = json.loads(meta or "{}")
        return Evidence(
            run=RunInfo.model_validate_json(info),
            config=self._config(config, run_id),
            steps=tables["steps"],
            validation=tables["validation"],
            layer_stats=tables["layer_stats"],
            param_stats=tables["param_stats"],
            ranks=tables["rank_stats"],
            layers={k: from_dict(LayerInfo, v) for k, v in meta.get("layers", {}).items()},
            params={k: from_dict(ParamInfo, v) for k, v in meta.get("params", {}).items()},
            optimizers=[from_dict(OptimizerInfo, v) for v in meta.get("optimizers", [])],
            class_counts={int(k): v for k, v in meta.get("class_counts", {}).items()},
            events=events,
        )

    def _config(self, text: str | None, run_id: str) -> DebuggingConfig:
        from modeldebug.config import DebuggingConfig

        if not text:
            return DebuggingConfig()
        try:
            return DebuggingConfig.model_validate_json(text)
        except ValueError as exc:  # saved by another version; the rules still run on defaults
            log.warning("Run %s: saved config does not parse (%s); using defaults", run_id, exc)
            return DebuggingConfig()

    # --- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        with self._lock:
            if self._conn is None:
                return
            atexit.unregister(self._atexit)
            try:
                self.flush()
            finally:
                if os.getpid() == self._pid:
                    self._conn.close()
                self._conn = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({self._where!r})"


def _close_at_exit(ref: "weakref.ref[RunStore]") -> None:
    store = ref()
    if store is not None:
        try:
            store.close()
        except Exception as exc:  # nothing left to raise to at interpreter exit
            log.warning("Could not flush %r at exit: %s", store, exc)
