"""SQLite run store: what the collector saw during a run, and the reports made from it.

One file per project directory (``.modeldebug/runs.db``), stdlib ``sqlite3`` in WAL mode:

- Rows are buffered in memory and written in one transaction per batch (``flush``), so a
  training step never waits on the disk, and a process killed with SIGKILL loses at most its
  last unflushed batch: committed batches are in the WAL and the file stays intact.
- WAL lets another process (``modeldebug report`` while training runs) read a consistent
  snapshot while the writer goes on; several processes may write different runs to one file
  (each write waits up to ``BUSY_TIMEOUT_S`` for the lock).
- Row tables are generated from the record dataclasses in ``modeldebug.records``: a new field is a
  new column, and an older file gets it through ``ALTER TABLE`` when opened.
- ``runs.report`` always holds the rules' report. What a language model said about a run (its
  summary, ranking, explanations, recommendations and the findings it added, all marked as its
  own) is a row of ``llm_analyses`` next to it: :meth:`RunStore.save_report` splits an enriched
  report in two, :meth:`RunStore.load_report` puts the latest successful analysis back.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import operator
import os
import sqlite3
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from modeldebug.records import (
    EventRecord,
    LayerRecord,
    ParamRecord,
    RankRecord,
    StepRecord,
    ValidationRecord,
    column_names,
)
from modeldebug.errors import DebuggingError

if TYPE_CHECKING:
    import numpy as np

    from modeldebug.config import DebuggingConfig
    from modeldebug.evidence import Evidence
    from modeldebug.records import LayerInfo, OptimizerInfo, ParamInfo
    from modeldebug.types import Report, RunInfo

# numpy, pydantic (the report models) and Evidence are imported where they are used: creating a
# store and a run needs only sqlite3, so `modeldebug run` starts the script without loading them.

log = logging.getLogger(__name__)

DEFAULT_PATH = ".modeldebug/runs.db"
BUSY_TIMEOUT_S = 10.0
MAX_PENDING_BATCHES = 64  # rows kept for retry when writes fail, in units of flush_rows
RUNS_HINT = "list runs with `modeldebug runs`"

_numpy_adapted = False


def _adapt_numpy() -> None:
    """numpy scalars reach records easily (np.float32 losses, np.int64 counts); sqlite3 binds only
    Python numbers, so teach it these once rather than converting every value in add(). Called
    before rows are written: a process that has not imported numpy has no numpy scalars to write."""
    global _numpy_adapted
    if _numpy_adapted or "numpy" not in sys.modules:
        return
    import numpy as np

    for t in (np.float16, np.float32):
        sqlite3.register_adapter(t, float)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        sqlite3.register_adapter(t, int)
    sqlite3.register_adapter(np.bool_, bool)
    _numpy_adapted = True


@dataclass(slots=True)
class LLMAnalysisRecord:
    """One LM analysis of a run (``modeldebug run/report --lm``), written by the LM layer, not the collector.

    ``analysis`` is :func:`modeldebug.llm.analyst.analysis_of` of the enriched report: what lands in
    ``report.metrics["llm"]`` plus the findings the LM added. Failed attempts are kept too
    (``status == "fallback"`` with the one-line notice) but never applied to a report.
    """

    created_at: float
    model: str
    status: str  # ok | fallback
    issue: str | None = None
    analysis: dict = field(default_factory=dict)


# --- tables generated from the record dataclasses ---------------------------------------------

_KINDS = {"float": "real", "int": "int", "bool": "bool", "str": "text", "bytes": "blob"}
_SQL_TYPES = {"real": "REAL", "int": "INTEGER", "bool": "INTEGER", "text": "TEXT", "blob": "BLOB", "json": "TEXT"}


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # real | int | bool | text | blob | json (anything else, stored as JSON text)
    default: Any

    def ddl(self) -> str:
        # The DEFAULT only matters for rows that existed before ALTER TABLE added the column:
        # they read back as the dataclass default (NaN/None defaults stay NULL, read as NaN).
        sql = f'"{self.name}" {_SQL_TYPES[self.kind]}'
        d = self.default
        if isinstance(d, bool):
            sql += f" DEFAULT {int(d)}"
        elif isinstance(d, int) or (isinstance(d, float) and math.isfinite(d)):
            sql += f" DEFAULT {d!r}"
        elif isinstance(d, str):
            sql += " DEFAULT '" + d.replace("'", "''") + "'"
        return sql


def _column_of(f) -> _Column:
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in ann.split("|") if p.strip() != "None"]
    kind = _KINDS.get(parts[0], "json") if len(parts) == 1 else "json"
    return _Column(f.name, kind, None if f.default is MISSING else f.default)


class _Spec:
    """One record type's table: columns, DDL, INSERT and SELECT, all from the dataclass fields."""

    def __init__(self, table: str, record_type: type, name_column: str | None, order: str, by_step: bool = True):
        self.table = table
        self.record_type = record_type
        self.columns = [_column_of(f) for f in fields(record_type)]
        self.names = column_names(record_type)
        quoted = ", ".join(f'"{n}"' for n in self.names)
        self.insert = f'INSERT INTO {table} (run_id, {quoted}) VALUES ({", ".join("?" * (len(self.names) + 1))})'
        self.select = f"SELECT {quoted} FROM {table} WHERE run_id = ? ORDER BY {order}"
        self.indexes = {f"{table}_run_step": "run_id, step"} if by_step else {f"{table}_run": "run_id"}
        if name_column:
            self.indexes[f"{table}_run_{name_column}"] = f'run_id, "{name_column}"'
        self._get = operator.attrgetter(*self.names)  # one C call per record instead of a loop
        self._json = [i for i, c in enumerate(self.columns) if c.kind == "json"]

    @functools.cached_property
    def _dtype(self) -> "np.dtype":
        import numpy as np

        types = {"real": np.float64, "int": np.int64, "bool": np.bool_}
        return np.dtype([(c.name, types.get(c.kind, object)) for c in self.columns])

    def row(self, run_id: str, record: Any) -> tuple:
        values = self._get(record)
        if self._json:
            values = list(values)
            for i in self._json:
                values[i] = json.dumps(values[i], default=_json_default)
        return (run_id, *values)

    def create(self) -> list[str]:
        cols = ", ".join(c.ddl() for c in self.columns)
        return [f"CREATE TABLE IF NOT EXISTS {self.table} (run_id TEXT NOT NULL, {cols})"]

    def columns_from_rows(self, rows: list[tuple]) -> dict[str, np.ndarray]:
        """Numpy columns straight from cursor rows: numpy converts the tuples in C, no per-row objects."""
        import numpy as np

        try:
            packed = np.array(rows, dtype=self._dtype)  # NULL (SQLite's NaN) becomes NaN in float fields
        except (TypeError, ValueError):  # a NULL in an integer column (or a stray value): go column by column
            cols = list(zip(*rows)) if rows else [()] * len(self.columns)
            return {c.name: _array(values, c.kind) for c, values in zip(self.columns, cols)}
        return {c.name: _finish(packed[c.name], c.kind) for c in self.columns}

    def dicts_from_rows(self, rows: list[tuple]) -> list[dict[str, Any]]:
        """Plain Python values, for the few rows (events) that are read as dicts."""
        json_at = set(self._json)
        return [
            {n: json.loads(v) if i in json_at and v is not None else v for i, (n, v) in enumerate(zip(self.names, row))}
            for row in rows
        ]


def _finish(column: np.ndarray, kind: str) -> np.ndarray:
    import numpy as np

    if kind == "text" and not np.equal(column, None).any():
        return column.astype(str)  # the dtype Evidence.build gives names: fast sorting and grouping
    if kind == "json":
        return _objects([None if v is None else json.loads(v) for v in column])
    return column.copy()  # contiguous, and frees the packed rows


def _array(values: tuple, kind: str) -> np.ndarray:
    import numpy as np

    try:
        if kind == "real":
            return np.array(values, dtype=np.float64)
        if kind == "bool":
            return np.array(values, dtype=bool)
        if kind == "int":
            try:
                return np.array(values, dtype=np.int64)
            except TypeError:  # NULLs: keep them as NaN rather than inventing a number
                return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        return _objects(values)
    return _finish(_objects(values), kind)


def _objects(values) -> np.ndarray:
    import numpy as np

    out = np.empty(len(values), dtype=object)  # filled, not np.array(values): no nesting of lists
    out[:] = values
    return out


_SPECS = [
    _Spec("steps", StepRecord, None, "step, rowid"),
    _Spec("layer_stats", LayerRecord, "layer", "step, rowid"),
    _Spec("param_stats", ParamRecord, "param", "step, rowid"),
    _Spec("validation", ValidationRecord, None, "step, rowid"),
    _Spec("events", EventRecord, None, "rowid"),  # event steps may be NULL: keep them as written
    _Spec("rank_stats", RankRecord, "rank", "step, rank, rowid"),  # cross-rank summaries (distributed runs)
    _Spec("llm_analyses", LLMAnalysisRecord, None, "created_at, rowid", by_step=False),  # written directly, not buffered
]
_SPEC_BY_TYPE = {s.record_type: s for s in _SPECS}
_SPEC_BY_TABLE = {s.table: s for s in _SPECS}

_RUNS_COLUMNS = {"started_at": "REAL", "info": "TEXT", "config": "TEXT", "meta": "TEXT", "report": "TEXT"}
_RUNS_DDL = "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, " + ", ".join(
    f"{k} {v}" for k, v in _RUNS_COLUMNS.items()
) + ")"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, tensors
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _from_dict(cls: type, data: dict) -> Any:
    """A dataclass from saved JSON, ignoring keys a newer or older version wrote."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


# --- the store ---------------------------------------------------------------------------------


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
    ):
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, got {flush_rows}")
        self.path = None if path is None else Path(path)
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
        target = ":memory:" if self.path is None else str(self.path)
        conn = None
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
            conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: committed batches survive a killed process (not a power cut), and
            # commits do not wait for fsync.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._ensure_schema(conn)
            return conn
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise self._open_error(exc) from exc

    def _open_error(self, exc: Exception) -> DebuggingError:
        text = str(exc)
        where = self._where
        if "not a database" in text or "malformed" in text:
            message = (
                f"{where} is not a readable modeldebug run store ({text}). Move it aside "
                f"(e.g. `mv {where} {where}.bad`) and run again: a new store will be created there."
            )
        elif "locked" in text or "busy" in text:
            message = (
                f"{where} stayed locked by another process for over {BUSY_TIMEOUT_S:.0f} s ({text}). "
                "Wait for that process to finish, or point this run at another store file."
            )
        else:
            message = f"Could not open the run store {where} ({text}). Check that the path is a writable file location."
        return DebuggingError(message, type="monitoring", details={"path": where, "error": text})

    @staticmethod
    def _schema_changes(conn: sqlite3.Connection) -> list[str]:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        changes: list[str] = []
        if "runs" not in tables:
            changes.append(_RUNS_DDL)
        else:
            have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
            changes += [f"ALTER TABLE runs ADD COLUMN {k} {v}" for k, v in _RUNS_COLUMNS.items() if k not in have]
        if "runs_started" not in indexes:
            changes.append("CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at)")
        for spec in _SPECS:
            if spec.table not in tables:
                changes += spec.create()
            else:
                # A file from an older version: add the columns it lacks (cheap forward compatibility).
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({spec.table})")}
                changes += [
                    f"ALTER TABLE {spec.table} ADD COLUMN {c.ddl()}" for c in spec.columns if c.name not in have
                ]
            changes += [
                f"CREATE INDEX IF NOT EXISTS {name} ON {spec.table} ({cols})"
                for name, cols in spec.indexes.items()
                if name not in indexes
            ]
        return changes

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        # Look first without a write lock: a reader opening a store that is up to date writes nothing.
        if not self._schema_changes(conn):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in self._schema_changes(conn):  # again, under the lock: another process may have won
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # --- transactions ------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DebuggingError(f"The run store {self._where} is closed.", type="monitoring")
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
            except sqlite3.OperationalError as exc:
                raise DebuggingError(
                    f"Could not write to the run store {self._where} ({exc}).", type="monitoring"
                ) from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot, even while a writer commits."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

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
            conn.execute("UPDATE runs SET meta = ? WHERE id = ?", (json.dumps(merged, default=_json_default), run_id))

    def save_report(self, run_id: str, report: Report) -> None:
        """Save the run's report: the rules' part as the report, an LM's analysis (if it carries a new one)
        as a row of ``llm_analyses``, in one transaction."""
        from modeldebug.llm.analyst import analysis_of, rules_only

        analysis = analysis_of(report)
        if analysis is not None:
            stored = (report.metrics.get("llm") or {}).get("stored")
            report = rules_only(report)
            if stored:  # applied from this store: nothing new to keep
                analysis = None
        with self._write() as conn:
            self._run_row(conn, run_id, "id")
            conn.execute("UPDATE runs SET report = ? WHERE id = ?", (report.to_json(indent=None), run_id))
            if analysis is not None:
                self._insert_analysis(conn, run_id, analysis)

    def load_report(self, run_id: str, *, llm: bool = True) -> Report | None:
        """The saved report, or None when the run has none yet.

        With ``llm`` (the default) the latest successful LM analysis of the run is applied to it
        (marked: ``metrics["llm"]`` with ``stored``, the LM's findings with ``source="llm"``);
        ``llm=False`` gives the rules' report alone.
        """
        with self._read() as conn:
            (text,) = self._run_row(conn, run_id, "report")
        from modeldebug.types import Report

        if text is None:
            return None
        report = Report.from_json(text)
        return self.with_llm_analysis(run_id, report) if llm else report

    def with_llm_analysis(self, run_id: str, report: Report) -> Report:
        """``report`` (a rules' report of this run) with the run's latest successful LM analysis applied, if any."""
        row = next((r for r in reversed(self.llm_analyses(run_id)) if r["status"] == "ok"), None)
        if row is None:
            return report
        from modeldebug.llm.analyst import apply_analysis

        report = apply_analysis(report, row["analysis"])
        report.metrics["llm"]["stored"] = {"id": row["id"], "created_at": row["created_at"]}
        return report

    def save_llm_analysis(self, run_id: str, analysis: dict[str, Any]) -> int:
        """Keep one LM analysis of the run (see :class:`LLMAnalysisRecord`); returns its id."""
        with self._write() as conn:
            self._run_row(conn, run_id, "id")
            return self._insert_analysis(conn, run_id, analysis)

    def llm_analyses(self, run_id: str) -> list[dict[str, Any]]:
        """Every LM analysis of the run, oldest first: id, created_at, model, status, issue, analysis."""
        spec = _SPEC_BY_TYPE[LLMAnalysisRecord]
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
        spec = _SPEC_BY_TYPE[LLMAnalysisRecord]
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

    def _run_row(self, conn: sqlite3.Connection, run_id: str, columns: str) -> tuple:
        row = conn.execute(f"SELECT {columns} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"No run {run_id!r} in {self._where}; {RUNS_HINT} to see the ids.")
        return row

    # --- rows --------------------------------------------------------------------------------

    def add(self, run_id: str, record: Any) -> None:
        """Buffer one record; written at the next flush (automatic by row count or time)."""
        with self._lock:
            self._buffer(run_id, record)
            self._maybe_flush()

    def add_many(self, run_id: str, records: Iterable[Any]) -> None:
        with self._lock:
            for record in records:
                self._buffer(run_id, record)
                if self._pending_count >= self._flush_rows:  # a long iterable is written as it goes
                    self._maybe_flush()
            self._maybe_flush()

    def _buffer(self, run_id: str, record: Any) -> None:
        spec = _SPEC_BY_TYPE.get(type(record))
        if spec is None:
            expected = ", ".join(t.__name__ for t in _SPEC_BY_TYPE)
            raise TypeError(f"Cannot store a {type(record).__name__}; expected one of {expected}")
        self._pending.setdefault(spec.table, []).append(spec.row(run_id, record))
        self._pending_count += 1

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now >= self._retry_at and (
            self._pending_count >= self._flush_rows or now - self._last_flush >= self._flush_interval_s
        ):
            self.flush()

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
        _adapt_numpy()
        for table, rows in self._pending.items():
            conn.executemany(_SPEC_BY_TABLE[table].insert, rows)

    def _flushed(self) -> None:
        # Called only after COMMIT: a failed write keeps its rows for the next try.
        self._pending = {}
        self._pending_count = 0
        self._last_flush = time.monotonic()
        self._retry_at = 0.0

    # --- evidence ----------------------------------------------------------------------------

    def load_evidence(self, run_id: str) -> Evidence:
        """Everything about one run as Evidence, this process's buffered rows included."""
        from modeldebug.evidence import Evidence, Table
        from modeldebug.records import LayerInfo, OptimizerInfo, ParamInfo
        from modeldebug.types import RunInfo

        self.flush()  # buffered rows are written first, so one query per table sees them all
        with self._read() as conn:
            info, config, meta = self._run_row(conn, run_id, "info, config, meta")
            tables = {}
            for spec in _SPECS:
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
            layers={k: _from_dict(LayerInfo, v) for k, v in meta.get("layers", {}).items()},
            params={k: _from_dict(ParamInfo, v) for k, v in meta.get("params", {}).items()},
            optimizers=[_from_dict(OptimizerInfo, v) for v in meta.get("optimizers", [])],
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
