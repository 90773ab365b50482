"""The SQLite run store: round trips, run lookup, concurrent readers, killed writers, bad files, speed."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from modeldebug.records import EventRecord, LayerRecord, ParamRecord, StepRecord, ValidationRecord
from modeldebug.config import DebuggingConfig
from modeldebug.errors import DebuggingError
from modeldebug.evidence import LayerInfo, OptimizerInfo, ParamInfo, histogram_counts
from modeldebug.store import RunStore
from modeldebug.types import Finding, MonitorOverhead, Report, RunInfo

SRC = Path(__file__).resolve().parents[1] / "src"
NAN = math.nan


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "store" / "runs.db"


@contextmanager
def raw_db(path):
    """A plain sqlite3 connection (another reader), committed and closed on exit."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def column_values(table, name) -> list:
    return [v.item() if hasattr(v, "item") else v for v in getattr(table, name)]


def test_round_trip_every_record_type(db):
    hist = np.array([0, 3, 7, 2**40], dtype="<i8").tobytes()
    steps = [
        StepRecord(step=0, loss=2.5, grad_norm=NAN, lr=1e-3, loss_nonfinite=False, backward_calls=1, sampled=True),
        StepRecord(step=1, loss=NAN, grad_norm=math.inf, loss_nonfinite=True, optimizer_stepped=False),
        StepRecord(step=2, loss=-math.inf, input_mean=0.1, rss_bytes=1.5e9, forward_calls=3),
    ]
    layers = [
        LayerRecord(step=0, layer="net.0", numel=128, mean=0.5, std=NAN, hist_lo=-1.0, hist_hi=1.0, hist=hist),
        LayerRecord(step=0, layer="net.2", numel=10, mean=NAN, nonfinite=4, hist=None),
    ]
    params = [
        ParamRecord(step=0, param="net.0.weight", norm=3.0, grad_norm=NAN, has_grad=True, changed=True),
        ParamRecord(step=0, param="net.0.bias", update_ratio=1e-4, has_grad=False),
    ]
    validation = [ValidationRecord(step=2, loss=1.25, batches=4), ValidationRecord(step=3, loss=NAN)]
    events = [
        EventRecord(step=None, type="start", data={"argv": ["train.py", "--lr", "1"], "nested": {"a": 1.5}}),
        EventRecord(step=1, type="nonfinite", data={"where": "net.2"}),
    ]
    config = DebuggingConfig(analysis_level="comprehensive", histogram_bins=16)
    with RunStore(db) as store:
        run_id = store.create_run(RunInfo(id="run-1", command=["python", "train.py"], device="cpu"), config)
        for record in steps + layers + params:
            store.add(run_id, record)
        store.add_many(run_id, validation + events)
        store.set_meta(
            run_id,
            layers={"net.0": LayerInfo("net.0", "Linear", 0, parameters=138, description="Linear(...)")},
            params={"net.0.weight": ParamInfo("net.0.weight", "net.0", [10, 12], 120, True, True, lr=1e-3)},
            optimizers=[OptimizerInfo("Adam", [{"lr": 1e-3, "betas": (0.9, 0.999), "params": ["net.0.weight"]}])],
            class_counts={0: 90, 1: 10},
        )

    # A fresh store on the same file reads everything back.
    with RunStore(db) as store:
        ev = store.load_evidence("run-1")

    assert ev.run.id == "run-1" and ev.run.command == ["python", "train.py"] and ev.run.device == "cpu"
    assert ev.run.started_at is not None and ev.run.status == "running"
    assert ev.config == config
    for table, records in [
        (ev.steps, steps),
        (ev.layer_stats, layers),
        (ev.param_stats, params),
        (ev.validation, validation),
    ]:
        assert len(table) == len(records)
        for name in table.columns:
            got = column_values(table, name)
            want = [getattr(r, name) for r in records]
            assert all(same(g, w) for g, w in zip(got, want)), (name, got, want)
    # dtypes the rules can count on
    assert ev.steps.loss.dtype == np.float64 and ev.steps.step.dtype == np.int64
    assert ev.steps.loss_nonfinite.dtype == np.bool_
    assert ev.layer_stats.layer.dtype.kind == "U"
    assert list(histogram_counts(ev.layer_stats.hist[0])) == [0, 3, 7, 2**40]
    assert histogram_counts(ev.layer_stats.hist[1]) is None
    assert ev.layer("net.2").nonfinite.tolist() == [4]

    assert ev.events == [
        {"step": None, "type": "start", "data": {"argv": ["train.py", "--lr", "1"], "nested": {"a": 1.5}}},
        {"step": 1, "type": "nonfinite", "data": {"where": "net.2"}},
    ]
    assert ev.layers["net.0"] == LayerInfo("net.0", "Linear", 0, parameters=138, description="Linear(...)")
    assert ev.params["net.0.weight"].shape == [10, 12] and ev.params["net.0.weight"].lr == 1e-3
    assert ev.optimizers[0].type == "Adam"
    assert ev.optimizers[0].param_groups[0]["betas"] == [0.9, 0.999]  # tuples come back as lists (JSON)
    assert ev.class_counts == {0: 90, 1: 10}


def test_numpy_scalars_are_stored_as_numbers(db):
    with RunStore(db) as store:
        store.create_run(RunInfo(id="np"))
        store.add("np", StepRecord(step=np.int64(3), loss=np.float32(0.5), loss_nonfinite=np.bool_(True)))
        ev = store.load_evidence("np")
    assert ev.steps.step.tolist() == [3] and ev.steps.loss.tolist() == [0.5]
    assert ev.steps.loss_nonfinite.tolist() == [True]


def test_unknown_record_type_is_refused(db):
    with RunStore(db) as store:
        store.create_run(RunInfo(id="r"))
        with pytest.raises(TypeError, match="dict"):
            store.add("r", {"step": 1})


def test_set_meta_replaces_only_what_is_given(db):
    with RunStore(db) as store:
        store.create_run(RunInfo(id="m"))
        store.set_meta("m", layers={"a": LayerInfo("a", "ReLU", 0)}, class_counts={1: 5})
        store.set_meta("m", layers={"b": LayerInfo("b", "Linear", 1)})
        ev = store.load_evidence("m")
        assert list(ev.layers) == ["b"] and ev.class_counts == {1: 5}
        with pytest.raises(ValueError, match="modeldebug runs"):
            store.set_meta("nope", class_counts={})


def test_update_run_and_list_runs_newest_first(db):
    with RunStore(db) as store:
        for run_id, started in [("old", 100.0), ("newer", 300.0), ("middle", 200.0)]:
            store.create_run(RunInfo(id=run_id, started_at=started))
        store.create_run(RunInfo(id="now"))  # started_at filled in: now, so newest
        assert [r.id for r in store.list_runs()] == ["now", "newer", "middle", "old"]
        assert [r.id for r in store.list_runs(limit=2)] == ["now", "newer"]

        store.add("old", StepRecord(step=0, loss=1.0))  # buffered: update_run writes it too
        store.update_run(
            "old", status="completed", exit_code=0, steps=1, duration_s=2.5,
            monitor_overhead=MonitorOverhead(time_fraction=0.01, peak_memory_bytes=1024),
            models=[{"name": "net", "parameters": 10, "trainable": 10}],
        )
        old = next(r for r in store.list_runs() if r.id == "old")
        assert old.status == "completed" and old.exit_code == 0 and old.steps == 1
        assert old.monitor_overhead.peak_memory_bytes == 1024 and old.models[0].name == "net"
        assert old.started_at == 100.0
        with raw_db(db) as raw:
            assert raw.execute("SELECT count(*) FROM steps WHERE run_id = 'old'").fetchone() == (1,)

        with pytest.raises(ValueError):
            store.update_run("old", status="exploded")
        with pytest.raises(ValueError):
            store.update_run("old", colour="red")
        with pytest.raises(ValueError, match="modeldebug runs"):
            store.update_run("missing", status="completed")
        with pytest.raises(ValueError, match="already exists"):
            store.create_run(RunInfo(id="old"))


def test_resolve(db):
    with RunStore(db) as store:
        with pytest.raises(ValueError, match="No runs recorded"):
            store.resolve("latest")
        store.create_run(RunInfo(id="abc123", started_at=1.0))
        store.create_run(RunInfo(id="abd456", started_at=2.0))
        store.create_run(RunInfo(id="abc", started_at=0.5))

        assert store.resolve("latest") == "abd456"
        assert store.resolve("abd456") == "abd456"
        assert store.resolve("abd") == "abd456"
        assert store.resolve("abc1") == "abc123"
        assert store.resolve("abc") == "abc"  # a full id wins over being a prefix of another
        with pytest.raises(ValueError, match="several runs") as ambiguous:
            store.resolve("ab")
        assert "abc123" in str(ambiguous.value) and "abd456" in str(ambiguous.value)
        assert "modeldebug runs" in str(ambiguous.value)
        with pytest.raises(ValueError, match="No run matches 'zzz'.*modeldebug runs"):
            store.resolve("zzz")
        with pytest.raises(ValueError, match="modeldebug runs"):
            store.resolve("")


def test_reports_round_trip(db):
    report = Report(
        run=RunInfo(id="r", status="completed"),
        findings=[Finding(kind="exploding_gradient", severity="high", confidence=0.9, message="grad norm 1e6")],
        metrics={"loss": 0.5},
    )
    with RunStore(db) as store:
        store.create_run(RunInfo(id="r"))
        assert store.load_report("r") is None
        store.save_report("r", report)
    with RunStore(db) as store:
        assert store.load_report("r") == report
        with pytest.raises(ValueError):
            store.save_report("missing", report)


def test_reader_sees_committed_rows_while_the_writer_runs(db):
    writer = RunStore(db, flush_rows=10**6, flush_interval_s=3600)
    try:
        writer.create_run(RunInfo(id="live"))
        writer.add_many("live", (StepRecord(step=i, loss=1.0 / (i + 1)) for i in range(100)))
        writer.flush()
        writer.add_many("live", (StepRecord(step=i) for i in range(100, 105)))  # buffered, not committed

        with RunStore(db) as reader:
            ev = reader.load_evidence(reader.resolve("latest"))
            assert len(ev.steps) == 100 and ev.run.status == "running"
            with raw_db(db) as raw:
                assert raw.execute("SELECT count(*) FROM steps").fetchone() == (100,)
            # The writer's own view includes what it has buffered.
            assert len(writer.load_evidence("live").steps) == 105
            assert len(reader.load_evidence("live").steps) == 105
    finally:
        writer.close()


def test_flushes_by_row_count_and_by_time(db):
    store = RunStore(db, flush_rows=10, flush_interval_s=3600)
    reader = sqlite3.connect(db)
    count = lambda: reader.execute("SELECT count(*) FROM steps").fetchone()[0]  # noqa: E731
    try:
        store.create_run(RunInfo(id="f"))
        for i in range(9):
            store.add("f", StepRecord(step=i))
        assert count() == 0
        store.add("f", StepRecord(step=9))
        assert count() == 10 and store._pending_count == 0  # written and the buffer emptied

        store._flush_interval_s = 0.05
        store.add("f", StepRecord(step=10))
        time.sleep(0.1)
        store.add("f", StepRecord(step=11))
        assert count() == 12
    finally:
        store.close()
        reader.close()


def test_several_writers_share_one_file(db):
    RunStore(db).close()  # schema first, so the threads race only on rows

    def write(run_id: str) -> None:
        with RunStore(db, flush_rows=7) as store:
            store.create_run(RunInfo(id=run_id))
            for i in range(300):
                store.add(run_id, StepRecord(step=i, loss=float(i)))
                store.add(run_id, LayerRecord(step=i, layer="fc"))

    threads = [threading.Thread(target=write, args=(f"w{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with RunStore(db) as store:
        for k in range(3):
            ev = store.load_evidence(f"w{k}")
            assert ev.steps.step.tolist() == list(range(300)) and len(ev.layer_stats) == 300


CHILD = """
import sys
from modeldebug.records import LayerRecord, StepRecord
from modeldebug.store import RunStore
from modeldebug.types import RunInfo

path, run_id, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = RunStore(path, flush_rows=10**9, flush_interval_s=3600)
store.create_run(RunInfo(id=run_id))
step = 0
while True:
    for _ in range(batch):
        store.add(run_id, StepRecord(step=step, loss=1.0 / (step + 1)))
        store.add(run_id, LayerRecord(step=step, layer="fc", mean=float(step), hist=bytes(256)))
        step += 1
    store.flush()
    print(step, flush=True)
"""


# (rows per batch, steps flushed before the kill, extra delay): kills land while adding and while
# committing a large batch.
KILLS = [(50, 1000, 0.0), (50, 3000, 0.002), (2000, 4000, 0.0), (2000, 6000, 0.011), (5000, 5000, 0.023)]


def test_sigkill_loses_at_most_the_last_batch(tmp_path, db):
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(CHILD))
    pythonpath = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    for round_, (batch, kill_after, delay) in enumerate(KILLS):
        run_id = f"killed-{round_}"
        child = subprocess.Popen(
            [sys.executable, str(script), str(db), run_id, str(batch)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        flushed = 0
        try:
            while flushed < kill_after:
                line = child.stdout.readline()
                assert line, f"writer stopped early: {child.stderr.read()}"
                flushed = int(line)
            time.sleep(delay)
            os.kill(child.pid, signal.SIGKILL)  # mid-run: it is adding or committing the next batch
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        rest = child.stdout.read().split()  # lines it printed before the kill landed
        flushed = int(rest[-1]) if rest else flushed
        child.stdout.close()
        child.stderr.close()
        assert child.returncode == -signal.SIGKILL

        with raw_db(db) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with RunStore(db) as store:
            assert run_id in [r.id for r in store.list_runs()]
            ev = store.load_evidence(run_id)
        n = len(ev.steps)
        print(f"kill {round_}: child printed {flushed} flushed steps; store has {n}")
        assert n >= flushed
        # Batches are all or nothing: whole batches, steps and layer rows together, in order.
        assert n % batch == 0 and len(ev.layer_stats) == n
        assert ev.steps.step.tolist() == list(range(n))


def test_failed_writes_keep_rows_and_do_not_stall_every_add(db, monkeypatch):
    import modeldebug.store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.05)
    store = RunStore(db, flush_rows=5, flush_interval_s=3600)
    store.create_run(RunInfo(id="busy"))
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        for i in range(4):
            store.add("busy", StepRecord(step=i))
        with pytest.raises(DebuggingError, match="Could not write"):
            store.add("busy", StepRecord(step=4))
        start = time.perf_counter()
        for i in range(5, 50):  # no retry (and no wait for the lock) on every add
            store.add("busy", StepRecord(step=i))
        assert time.perf_counter() - start < 0.5
        blocker.execute("ROLLBACK")
        store.flush()
        assert store.load_evidence("busy").steps.step.tolist() == list(range(50))
    finally:
        blocker.close()
        store.close()


def test_corrupt_file_is_refused_with_a_clear_message(tmp_path):
    bad = tmp_path / "runs.db"
    bad.write_bytes(b"this is not sqlite\n" * 200)
    with pytest.raises(DebuggingError) as err:
        RunStore(bad)
    assert err.value.type == "monitoring"
    assert str(bad) in str(err.value) and "Move it aside" in str(err.value)

    # A real store whose header got overwritten.
    damaged = tmp_path / "damaged.db"
    with RunStore(damaged) as store:
        store.create_run(RunInfo(id="x"))
    with open(damaged, "r+b") as f:
        f.write(b"\xff" * 32)
    with pytest.raises(DebuggingError, match="Move it aside"):
        RunStore(damaged)


def test_older_file_gets_the_new_columns(db):
    db.parent.mkdir(parents=True)
    with raw_db(db) as raw:  # as an earlier version might have left it
        raw.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, started_at REAL, info TEXT)")
        raw.execute("CREATE TABLE steps (run_id TEXT NOT NULL, step INTEGER, loss REAL)")
        raw.execute("INSERT INTO runs VALUES ('old', 1.0, ?)", (RunInfo(id="old", started_at=1.0).model_dump_json(),))
        raw.execute("INSERT INTO steps VALUES ('old', 0, 0.5)")
    with RunStore(db) as store:
        store.add("old", StepRecord(step=1, loss=0.25, backward_calls=2))
        ev = store.load_evidence("old")
        assert store.load_report("old") is None
    assert ev.steps.loss.tolist() == [0.5, 0.25]
    assert ev.steps.backward_calls.tolist() == [0, 2]  # old rows read as the field's default
    assert ev.steps.optimizer_stepped.tolist() == [True, True]
    assert math.isnan(ev.steps.grad_norm[0])


def test_default_path_and_wal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with RunStore() as store:
        store.create_run(RunInfo(id="d"))
    path = tmp_path / ".modeldebug" / "runs.db"
    assert path.exists()
    with raw_db(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_in_memory_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with RunStore(None) as store:
        store.create_run(RunInfo(id="mem"))
        store.add_many("mem", [StepRecord(step=i, loss=NAN if i == 1 else float(i)) for i in range(3)])
        store.add("mem", LayerRecord(step=0, layer="fc", hist=b"\x01" + bytes(7)))
        ev = store.load_evidence("mem")
        assert len(ev.steps) == 3 and math.isnan(ev.steps.loss[1])
        assert list(histogram_counts(ev.layer_stats.hist[0])) == [1]
        assert store.resolve("latest") == "mem"
        store.save_report("mem", Report(run=ev.run))
        assert store.load_report("mem").run.id == "mem"
    assert not (tmp_path / ".modeldebug").exists()
    with pytest.raises(DebuggingError, match="closed"):
        store.load_evidence("mem")


def test_load_speed(db, cpu_clock):
    rng = np.random.default_rng(0)
    steps, layers, params, sampled = 10_000, 100, 100, 1_000
    with RunStore(db, flush_rows=50_000) as store:
        store.create_run(RunInfo(id="big"))
        v = rng.random(steps).tolist()
        store.add_many(
            "big", (StepRecord(step=i, loss=v[i], grad_norm=v[i], lr=1e-3, step_s=0.01) for i in range(steps))
        )
        v = rng.random(sampled * layers).tolist()
        hist = rng.integers(0, 1000, 32).astype("<i8").tobytes()
        store.add_many("big", (
            LayerRecord(step=s * 10, layer=f"model.layers.{j}", numel=4096, mean=v[k], std=v[k], min=-v[k], max=v[k],
                        zero_frac=v[k], grad_norm=v[k], grad_mean=v[k], grad_std=v[k], hist=hist)
            for s in range(sampled) for j in range(layers) for k in [s * layers + j]
        ))
        store.add_many("big", (
            ParamRecord(step=s * 10, param=f"model.layers.{j}.weight", norm=v[k], grad_norm=v[k], update_ratio=v[k],
                        has_grad=True, changed=True)
            for s in range(sampled) for j in range(params) for k in [s * params + j]
        ))
    with RunStore(db) as store:
        start = cpu_clock()
        ev = store.load_evidence("big")
        elapsed = cpu_clock() - start
    print(f"load_evidence: {steps} steps + {len(ev.layer_stats)} layer rows + {len(ev.param_stats)} param rows "
          f"in {elapsed:.3f} s")
    assert len(ev.steps) == steps
    assert len(ev.layer_stats) == sampled * layers and len(ev.param_stats) == sampled * params
    assert ev.layer_stats.mean.dtype == np.float64 and ev.layer_stats.step[-1] == (sampled - 1) * 10
    assert elapsed < 3.0
