"""Evidence: everything collected about one run, in the shape the rules read.

The collector writes records to the run store; ``RunStore.load_evidence`` turns them back into
an Evidence; rules read only Evidence. Tests build Evidence by hand (``Evidence.build``) to check
a rule alone. Series are columns of numpy arrays (``Table``) so that a 10,000-step, 100-layer run
loads and analyses in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from modeldebug.records import (  # noqa: F401  (infos re-exported for old imports)
    LayerInfo,
    OptimizerInfo,
    ParamInfo,
    LayerRecord,
    ParamRecord,
    RankRecord,
    StepRecord,
    ValidationRecord,
    column_names,
)
from modeldebug.config import DebuggingConfig
from modeldebug.events import E, events_of
from modeldebug.types import RunInfo


class Table:
    """Equal-length named numpy columns. ``t.loss`` is a column; ``t[mask]`` selects rows."""

    __slots__ = ("_cols",)

    def __init__(self, columns: Mapping[str, Any]):
        cols = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"Expected columns of equal length but got lengths {sorted(lengths)}")
        object.__setattr__(self, "_cols", cols)

    @classmethod
    def from_rows(cls, rows: Iterable[Any], names: list[str]) -> "Table":
        """Rows are dataclass records, dicts or tuples in the order of ``names``."""
        rows = list(rows)
        if not rows:
            return cls({n: np.empty(0) for n in names})
        first = rows[0]
        if isinstance(first, dict):
            data = {n: [r.get(n) for r in rows] for n in names}
        elif isinstance(first, tuple):
            data = {n: [r[i] for r in rows] for i, n in enumerate(names)}
        else:
            data = {n: [getattr(r, n) for r in rows] for n in names}
        return cls({n: _column(v) for n, v in data.items()})

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self._cols[name]
        except KeyError:
            raise AttributeError(f"Table has no column {name!r}; columns: {list(self._cols)}") from None

    def __getitem__(self, selector) -> "Table":
        if isinstance(selector, str):
            return self._cols[selector]
        return Table({k: v[selector] for k, v in self._cols.items()})

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    def __contains__(self, name: str) -> bool:
        return name in self._cols

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def group_by(self, column: str) -> dict[Any, "Table"]:
        """Rows split by the values of ``column``, each group in its original order."""
        keys = self._cols[column]
        if len(keys) == 0:
            return {}
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        groups = {}
        for idx in np.split(order, bounds):
            groups[keys[idx[0]].item() if hasattr(keys[idx[0]], "item") else keys[idx[0]]] = self[idx]
        return groups


def _column(values: list) -> np.ndarray:
    if values and all(isinstance(v, (bytes, type(None))) for v in values) and any(
        isinstance(v, bytes) for v in values
    ):
        return np.array(values, dtype=object)
    try:
        arr = np.asarray([np.nan if v is None else v for v in values])
    except (ValueError, TypeError):
        return np.array(values, dtype=object)
    return arr


STEP_COLUMNS = column_names(StepRecord)
LAYER_COLUMNS = column_names(LayerRecord)
PARAM_COLUMNS = column_names(ParamRecord)
VALIDATION_COLUMNS = column_names(ValidationRecord)
RANK_COLUMNS = column_names(RankRecord)


@dataclass
class Evidence:
    run: RunInfo
    config: DebuggingConfig = field(default_factory=DebuggingConfig)
    steps: Table = field(default_factory=lambda: Table.from_rows([], STEP_COLUMNS))
    validation: Table = field(default_factory=lambda: Table.from_rows([], VALIDATION_COLUMNS))
    layer_stats: Table = field(default_factory=lambda: Table.from_rows([], LAYER_COLUMNS))
    param_stats: Table = field(default_factory=lambda: Table.from_rows([], PARAM_COLUMNS))
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    params: dict[str, ParamInfo] = field(default_factory=dict)
    optimizers: list[OptimizerInfo] = field(default_factory=list)
    class_counts: dict[int, int] = field(default_factory=dict)
    # Stored event rows ({"step", "type", "data"}), unknown types included: read through events_of.
    events: list[dict[str, Any]] = field(default_factory=list)
    # Distributed runs: every rank's summaries, gathered by rank 0 (collect/distributed.py).
    ranks: Table = field(default_factory=lambda: Table.from_rows([], RANK_COLUMNS))

    def __post_init__(self) -> None:
        self._layer_groups: dict[str, Table] | None = None
        self._param_groups: dict[str, Table] | None = None

    # Per-layer and per-parameter series, grouped once on first use.
    def layer(self, name: str) -> Table:
        if self._layer_groups is None:
            self._layer_groups = self.layer_stats.group_by("layer")
        return self._layer_groups.get(name) or Table.from_rows([], LAYER_COLUMNS)

    def param(self, name: str) -> Table:
        if self._param_groups is None:
            self._param_groups = self.param_stats.group_by("param")
        return self._param_groups.get(name) or Table.from_rows([], PARAM_COLUMNS)

    def events_of(self, cls: type[E]) -> list[E]:
        """The run's events of one type (a ``modeldebug.events`` class), in the order written."""
        return events_of(self.events, cls)

    def layers_in_order(self) -> list[LayerInfo]:
        seen = [l for l in self.layers.values() if l.order >= 0]
        return sorted(seen, key=lambda l: l.order)

    @classmethod
    def build(
        cls,
        *,
        steps: Iterable[StepRecord | dict] = (),
        validation: Iterable[ValidationRecord | dict] = (),
        layer_stats: Iterable[LayerRecord | dict] = (),
        param_stats: Iterable[ParamRecord | dict] = (),
        ranks: Iterable[RankRecord | dict] = (),
        run: RunInfo | None = None,
        **rest: Any,
    ) -> "Evidence":
        """Evidence from records or dicts (missing dict keys become NaN): for tests and tools."""

        def table(rows, record_type, names):
            rows = [r if not isinstance(r, dict) else record_type(**r) for r in rows]
            return Table.from_rows(rows, names)

        steps_t = table(steps, StepRecord, STEP_COLUMNS)
        return cls(
            run=run or RunInfo(id="built", status="completed", steps=len(steps_t)),
            steps=steps_t,
            validation=table(validation, ValidationRecord, VALIDATION_COLUMNS),
            layer_stats=table(layer_stats, LayerRecord, LAYER_COLUMNS),
            param_stats=table(param_stats, ParamRecord, PARAM_COLUMNS),
            ranks=table(ranks, RankRecord, RANK_COLUMNS),
            **rest,
        )


def histogram_counts(blob: bytes | None) -> np.ndarray | None:
    """Decode a stored activation histogram (little-endian int64 counts)."""
    if blob is None or (isinstance(blob, float) and np.isnan(blob)):
        return None
    return np.frombuffer(blob, dtype="<i8")
