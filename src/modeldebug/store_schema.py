"""The run store's tables, generated from the record dataclasses in :mod:`modeldebug.records`.

Each record type is one table (:class:`Spec`): a field is a column whose SQL type follows its
annotation (anything not a plain number, string or bytes is stored as JSON text); an older file
gets the columns it lacks through ``ALTER TABLE`` when opened (:func:`schema_changes`). Rows are
read back as numpy columns (or, for events, dicts) without a Python object per row.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import sqlite3
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable

from modeldebug.findings import jsonable
from modeldebug.records import (
    EventRecord,
    LayerRecord,
    ParamRecord,
    RankRecord,
    StepRecord,
    ValidationRecord,
    column_names,
)

if TYPE_CHECKING:
    import numpy as np

@dataclass(slots=True)
class LLMAnalysisRecord:
    """One LM analysis of a run (``modeldebug run/report --lm``), written by the LM layer, not the collector.

    ``analysis`` is an :class:`modeldebug.llm.analysis.LLMAnalysis` as JSON, opaque to the store: what
    lands in ``report.metrics.llm`` plus the findings the LM added. Failed attempts are kept too
    (``status == "fallback"`` with the one-line notice) but never applied to a report.
    """

    created_at: float
    model: str
    status: str  # ok | fallback
    issue: str | None = None
    analysis: dict = field(default_factory=dict)


_KINDS = {"float": "real", "int": "int", "bool": "bool", "str": "text", "bytes": "blob"}
_SQL_TYPES = {"real": "REAL", "int": "INTEGER", "bool": "INTEGER", "text": "TEXT", "blob": "BLOB", "json": "TEXT"}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # real | int | bool | text | blob | json (anything else, stored as JSON text)
    default: Any

    def ddl(self) -> str:
        # The DEFAULT only matters for rows that existed before ALTER TABLE added the column:
        # they read back as the dataclass default (NaN/None defaults stay NULL, read as NaN).
        sql = f'"{self.name}" {_SQL_TYPES[self.kind]}'
        default = _literal(self.default)
        return sql if default == "NULL" else f"{sql} DEFAULT {default}"


def _literal(value: Any) -> str:
    """``value`` as an SQL literal; NULL for None, NaN and what SQL cannot write."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return "NULL"


def column_of(f) -> Column:
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in ann.split("|") if p.strip() != "None"]
    kind = _KINDS.get(parts[0], "json") if len(parts) == 1 else "json"
    return Column(f.name, kind, None if f.default is MISSING else f.default)


def bools_as_ints(width: int, bools: list[int]) -> Callable[[tuple], tuple] | None:
    """A row with its bool columns as ints (the same 0 and 1 stored), or None without bool columns.

    sqlite3 binds an int at once but "adapts" a bool first (bool is not exactly int): two failed
    attribute lookups, each an AttributeError made and dropped, per value; a step row's 8 bools
    cost more than the rest of its write (callgrind: 54 K instructions a row, 27 K with ints). One
    expression per table, made from its columns once, converts a row without a Python loop (7 K);
    a value that is not a bool passes unchanged."""
    if not bools:
        return None
    at = set(bools)
    items = ", ".join(f"(+r[{i}] if r[{i}].__class__ is bool else r[{i}])" if i in at else f"r[{i}]" for i in range(width))
    return eval(f"lambda r: ({items},)", {"bool": bool})  # noqa: S307  (built from column indices only)


class Spec:
    """One record type's table: columns, DDL, INSERT and SELECT, all from the dataclass fields."""

    def __init__(self, table: str, record_type: type, name_column: str | None, order: str, by_step: bool = True):
        self.table = table
        self.record_type = record_type
        self.columns = [column_of(f) for f in fields(record_type)]
        self.names = column_names(record_type)
        quoted = ", ".join(f'"{n}"' for n in self.names)
        self.insert = f'INSERT INTO {table} (run_id, {quoted}) VALUES ({", ".join("?" * (len(self.names) + 1))})'
        self.select = f"SELECT {quoted} FROM {table} WHERE run_id = ? ORDER BY {order}"
        self.indexes = {f"{table}_run_step": "run_id, step"} if by_step else {f"{table}_run": "run_id"}
        if name_column:
            self.indexes[f"{table}_run_{name_column}"] = f'run_id, "{name_column}"'
        self._get = operator.attrgetter(*self.names)  # one C call per record instead of a loop
        self._json = [i for i, c in enumerate(self.columns) if c.kind == "json"]
        # (+1: a row begins with its run_id)
        self.bind = bools_as_ints(len(self.names) + 1, [i + 1 for i, c in enumerate(self.columns) if c.kind == "bool"])

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
                values[i] = json.dumps(values[i], default=json_default)
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


SPECS = [
    Spec("steps", StepRecord, None, "step, rowid"),
    Spec("layer_stats", LayerRecord, "layer", "step, rowid"),
    Spec("param_stats", ParamRecord, "param", "step, rowid"),
    Spec("validation", ValidationRecord, None, "step, rowid"),
    Spec("events", EventRecord, None, "rowid"),  # event steps may be NULL: keep them as written
    Spec("rank_stats", RankRecord, "rank", "step, rank, rowid"),  # cross-rank summaries (distributed runs)
    Spec("llm_analyses", LLMAnalysisRecord, None, "created_at, rowid", by_step=False),  # written directly, not buffered
]
SPEC_BY_TYPE = {s.record_type: s for s in SPECS}
SPEC_BY_TABLE = {s.table: s for s in SPECS}

RUNS_COLUMNS = {"started_at": "REAL", "info": "TEXT", "config": "TEXT", "meta": "TEXT", "report": "TEXT"}
# PRAGMA user_version of the files this version writes. A compatible change (a new column or table,
# added by schema_changes) keeps it; a change older versions cannot read raises it, and they refuse it.
SCHEMA_VERSION = 1
OUR_TABLES = frozenset({"runs", *SPEC_BY_TABLE})
RUNS_DDL = "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, " + ", ".join(
    f"{k} {v}" for k, v in RUNS_COLUMNS.items()
) + ")"


def json_default(obj: Any) -> Any:
    """``json.dumps``'s hook for what JSON cannot write (numpy values, tensors, sets): NaN kept as NaN."""
    return jsonable(obj, nonfinite="keep")


_SQL_NATIVE = frozenset({float, int, str, bytes, bool, type(None)})


def plain_rows(rows: list[tuple]) -> list[tuple]:
    """``rows`` with each value sqlite3 does not bind as a number (numpy and torch scalars: it would
    store a numpy integer's bytes as a blob) as its Python value. numpy scalars reach records easily
    (np.float32 losses, np.int64 counts); converting them here, where rows are written, spares every
    other sqlite3 user in the process a global ``sqlite3.register_adapter``."""
    native = _SQL_NATIVE.issuperset
    return [row if native(map(type, row)) else tuple(map(_plain, row)) for row in rows]


def _plain(value: Any) -> Any:
    if type(value) in _SQL_NATIVE:
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def from_dict(cls: type, data: dict) -> Any:
    """A dataclass from saved JSON, ignoring keys a newer or older version wrote."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def schema_changes(conn: sqlite3.Connection) -> list[str]:
    """The statements that bring the file's tables and indexes up to this version (none: up to date)."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    changes: list[str] = []
    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        changes.append(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if "runs" not in tables:
        changes.append(RUNS_DDL)
    else:
        have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        changes += [f"ALTER TABLE runs ADD COLUMN {k} {v}" for k, v in RUNS_COLUMNS.items() if k not in have]
    if "runs_started" not in indexes:
        changes.append("CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at)")
    for spec in SPECS:
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


def layout_problem(conn: sqlite3.Connection) -> tuple[str, str] | None:
    """Why this version must not use the file: ("newer" | "foreign" | "incompatible", what it holds),
    or None for a store it can read and write (an empty file is a new store). Reads only the schema."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
              if not name.startswith("sqlite_")}
    runs_columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")} if "runs" in tables else set()
    if not tables:
        return None
    if not {"id", "info"} <= runs_columns:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        return "foreign", f"it has no modeldebug runs table; its tables: {shown}"
    if version > SCHEMA_VERSION:
        return "newer", f"its layout is version {version}, this modeldebug reads up to version {SCHEMA_VERSION}"
    foreign = sorted(tables - OUR_TABLES)
    if foreign and version == 0:  # never stamped by modeldebug: another program's tables beside a runs table
        return "foreign", "it holds tables modeldebug does not know: " + ", ".join(foreign[:5])
    for spec in SPECS:
        if spec.table not in tables:
            continue
        known = {"run_id", *spec.names}
        # A column we would not write that refuses NULL: every insert of ours would fail.
        required = [r[1] for r in conn.execute(f"PRAGMA table_info({spec.table})")
                    if r[1] not in known and r[3] and r[4] is None]
        if required:
            return "incompatible", f"its {spec.table} table needs columns this version does not write: {', '.join(required)}"
    return None


def read_views(conn: sqlite3.Connection) -> list[str]:
    """For a read-only connection to an older file: TEMP views (searched before the file's tables) that
    add the columns it lacks with their defaults, so that every query of this version reads it."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    wanted = [("runs", ["id", *RUNS_COLUMNS], {})] + [
        (s.table, ["run_id", *s.names], {c.name: c.default for c in s.columns}) for s in SPECS
    ]
    views = []
    for table, names, defaults in wanted:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")} if table in tables else set()
        if table in tables and set(names) <= have:
            continue
        cols = ", ".join(f'"{n}"' if n in have else f'{_literal(defaults.get(n))} AS "{n}"' for n in names)
        # rowid named as a column: the queries order by it; a table the file never had reads as empty.
        source = f"rowid AS rowid, {cols} FROM main.{table}" if table in tables else f"0 AS rowid, {cols} WHERE 0"
        views.append(f"CREATE TEMP VIEW {table} AS SELECT {source}")
    return views
