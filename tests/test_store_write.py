"""The store's batched write binds bool columns as ints: the same 0/1 stored, without sqlite3's
adaptation of each bool (two failed attribute lookups a value, the larger part of a step row's write)."""

from __future__ import annotations

import sqlite3

import numpy as np

from modeldebug.records import StepRecord
from modeldebug.store import RunStore
from modeldebug.store_schema import SPECS, SPEC_BY_TYPE
from modeldebug.types import RunInfo


def test_rows_of_every_table_reach_sqlite_without_a_bool():
    filler = {"real": 1.5, "int": 1, "bool": True, "text": "x", "blob": b"x", "json": {"a": 1}}
    for spec in SPECS:
        record = spec.record_type(**{c.name: filler[c.kind] for c in spec.columns})
        row = spec.row("run", record)
        bound = row if spec.bind is None else spec.bind(row)
        assert bound == row  # (True == 1: the same values)
        assert not [v for v in bound if type(v) is bool], spec.table
        assert (spec.bind is None) == (not any(c.kind == "bool" for c in spec.columns))


def test_bool_columns_round_trip_as_integers_and_read_back_as_bools(tmp_path):
    path = tmp_path / "runs.db"
    store = RunStore(path)
    store.create_run(RunInfo(id="r", command=[], status="running", started_at=0.0), None)
    records = [StepRecord(step=i, sampled=i % 2 == 0, loss_nonfinite=i == 3, optimizer_stepped=i != 1)
               for i in range(5)]
    store.add_many("r", records)
    store.flush()
    with sqlite3.connect(path) as conn:
        types = {t for (t,) in conn.execute("SELECT DISTINCT typeof(sampled) FROM steps")}
    assert types == {"integer"}
    steps = store.load_evidence("r").steps
    assert steps["sampled"].dtype == np.bool_
    assert steps["sampled"].tolist() == [r.sampled for r in records]
    assert steps["loss_nonfinite"].tolist() == [r.loss_nonfinite for r in records]
    assert steps["optimizer_stepped"].tolist() == [r.optimizer_stepped for r in records]
    store.close()


def test_a_value_in_a_bool_column_that_is_not_a_bool_passes_unchanged():
    spec = SPEC_BY_TYPE[StepRecord]
    i = spec.names.index("sampled") + 1
    row = list(spec.row("run", StepRecord(step=0)))
    for value in (None, 1, 0):
        row[i] = value
        assert spec.bind(tuple(row))[i] is value


def test_a_row_made_without_its_record_is_the_row_of_the_record():
    from modeldebug.collect.steps import STEP_ROW
    from modeldebug.records import row_maker

    make = row_maker(StepRecord, ("step", "loss", "sampled"))
    row = make("run", 4, 2.5, True)
    assert row == SPEC_BY_TYPE[StepRecord].row("run", StepRecord(step=4, loss=2.5, sampled=True))
    assert StepRecord(*row[1:]) == StepRecord(step=4, loss=2.5, sampled=True)
    # The hot path's maker: every field but a sampled step's statistics, in its own order.
    names = STEP_ROW.__code__.co_varnames[1:STEP_ROW.__code__.co_argcount]
    values = {n: float(i) for i, n in enumerate(names)}
    row = STEP_ROW("run", *values.values())
    assert row == SPEC_BY_TYPE[StepRecord].row("run", StepRecord(**values))
    try:
        row_maker(StepRecord, ("step", "no_such_field"))
    except ValueError as exc:
        assert "no_such_field" in str(exc)
    else:
        raise AssertionError("an unknown field was accepted")


def test_rows_added_without_records_are_stored_and_read_as_records(tmp_path):
    from modeldebug.records import row_maker

    store = RunStore(tmp_path / "runs.db")
    store.create_run(RunInfo(id="r", command=[], status="running", started_at=0.0), None)
    make = row_maker(StepRecord, ("step", "loss", "sampled", "loss_nonfinite"))
    store.add_row(StepRecord, make("r", 0, 1.5, False, False))
    store.add("r", StepRecord(step=1, loss=float("inf"), sampled=True, loss_nonfinite=True))
    store.add_row(StepRecord, make("r", 2, 0.5, True, False))
    steps = store.load_evidence("r").steps
    assert steps["step"].tolist() == [0, 1, 2]
    assert steps["loss"].tolist() == [1.5, float("inf"), 0.5]
    assert steps["sampled"].tolist() == [False, True, True]
    assert steps["loss_nonfinite"].tolist() == [False, True, False]
    assert np.isnan(steps["grad_norm"]).all()
    store.close()
