"""A bad run store (issue 16 items 4 and 6): damaged, truncated, a directory, newer, someone else's,
read-only. Every command says what is wrong and what to do; `run` never loses the run it records."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from modeldebug.records import StepRecord
from modeldebug.store import RunStore, StoreError, side_path
from modeldebug.store_schema import SCHEMA_VERSION
from modeldebug.types import Report, RunInfo

SCRIPT = str(Path(__file__).parent / "scripts" / "train_small.py")


def _modeldebug(*args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "modeldebug", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1", **env))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_with_runs(path: Path, steps: int = 3000) -> None:
    with RunStore(path) as store:
        for run in ("old", "new"):
            store.create_run(RunInfo(id=run, command=["python", "t.py"], status="completed"))
            store.add_many(run, (StepRecord(step=i, loss=1.0 / (i + 1)) for i in range(steps)))


def _damage_middle(path: Path) -> None:
    """Overwrite the root page of the steps table: the header and the runs table stay readable,
    every read or insert of steps meets the damage."""
    with sqlite3.connect(path) as raw:
        (root,) = raw.execute("SELECT rootpage FROM sqlite_master WHERE name = 'steps'").fetchone()
        (page_size,) = raw.execute("PRAGMA page_size").fetchone()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xab" * page_size)


def _bad_stores(tmp_path: Path) -> dict[str, Path]:
    """One `.modeldebug/runs.db` of each kind of damage, each in its own project directory."""
    made = {}
    for kind in ("random", "truncated", "directory", "middle"):
        db = tmp_path / kind / ".modeldebug" / "runs.db"
        db.parent.mkdir(parents=True)
        if kind == "random":
            db.write_bytes(os.urandom(64 * 1024))
        elif kind == "directory":
            db.mkdir()
        else:
            _store_with_runs(db)
            if kind == "truncated":
                with open(db, "r+b") as f:
                    f.truncate(db.stat().st_size // 3)
            else:
                _damage_middle(db)
        made[kind] = db
    return made


# --- the store ----------------------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True])
def test_damage_is_a_store_error_that_says_what_to_do(tmp_path, read_only):
    for kind, db in _bad_stores(tmp_path).items():
        with pytest.raises(StoreError) as err:
            with RunStore(db, read_only=read_only) as store:  # the middle: found when the rows are read
                store.load_evidence(store.resolve("old"))
        expected = "directory" if kind == "directory" else "damaged"
        assert err.value.kind == expected, (kind, err.value)
        assert err.value.type == "monitoring" and str(db) in str(err.value)
        assert "--store" in str(err.value) and "mv " in str(err.value), str(err.value)


def test_a_write_that_meets_damage_moves_the_run_to_a_side_store(tmp_path):
    db = tmp_path / "runs.db"
    _store_with_runs(db)
    _damage_middle(db)
    before = _digest(db)
    with RunStore(db) as store:
        store.add_many("new", (StepRecord(step=i, loss=0.5) for i in range(3000, 3600)))
        store.update_run("new", status="crashed")
        ev = store.load_evidence("new")
        assert store.diverted_from == db and store.path == side_path(db, "new") != db
    assert ev.run.status == "crashed" and ev.run.command == ["python", "t.py"]
    assert ev.steps.step.tolist() == list(range(3000, 3600))  # the rows before sat on the damaged page
    assert _digest(db) == before  # the damaged file is left for the user to move aside


def test_schema_version_is_recorded_and_a_newer_layout_refused(tmp_path):
    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        store.create_run(RunInfo(id="a"))
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = _digest(db)
    for read_only in (False, True):
        with pytest.raises(StoreError, match="newer modeldebug") as err:
            RunStore(db, read_only=read_only)
        assert err.value.kind == "newer" and "Upgrade modeldebug" in str(err.value)
    assert _digest(db) == before


def test_an_unversioned_store_is_stamped_when_written(tmp_path):
    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        store.create_run(RunInfo(id="a"))
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 0")  # as versions before the stamp left it
    with RunStore(db, read_only=True) as store:
        assert [r.id for r in store.list_runs()] == ["a"]
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (0,)  # a reader changes nothing
    RunStore(db).close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_layout_whose_inserts_would_fail_is_refused(tmp_path):
    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, started_at REAL, info TEXT)")
        raw.execute("CREATE TABLE steps (run_id TEXT NOT NULL, step INTEGER, epoch_id INTEGER NOT NULL)")
    with pytest.raises(StoreError, match="epoch_id") as err:
        RunStore(db)
    assert err.value.kind == "incompatible"


@pytest.mark.parametrize("read_only", [False, True])
def test_someone_elses_database_is_refused_and_left_as_it_was(tmp_path, read_only):
    for name, tables in {"plain.sqlite": ["users (a)"], "beside.sqlite": ["runs (id TEXT, info TEXT)", "users (a)"]}.items():
        db = tmp_path / name
        with sqlite3.connect(db) as raw:
            for table in tables:
                raw.execute(f"CREATE TABLE {table}")
        before = _digest(db)
        with pytest.raises(StoreError, match="not a modeldebug run store") as err:
            RunStore(db, read_only=read_only)
        assert err.value.kind == "foreign" and "users" in str(err.value)
        assert _digest(db) == before
        with sqlite3.connect(db) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name)) == [name]


def test_read_only_creates_nothing_and_saves_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "runs.db"
    with pytest.raises(StoreError) as err:
        RunStore(missing, read_only=True)
    assert err.value.kind == "missing" and not missing.parent.exists()

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="No runs recorded") as err:
        RunStore(empty, read_only=True)
    assert empty.read_bytes() == b""

    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        store.create_run(RunInfo(id="a"))
    before = _digest(db)
    with RunStore(db, read_only=True) as store:
        assert store.resolve("latest") == "a"
        with pytest.raises(StoreError, match="read-only") as err:
            store.save_report("a", Report(run=RunInfo(id="a")))
        assert err.value.kind == "read_only"
    assert _digest(db) == before


def test_read_only_reads_an_older_file_without_changing_it(tmp_path):
    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as raw:  # as an earlier version might have left it
        raw.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, started_at REAL, info TEXT)")
        raw.execute("CREATE TABLE steps (run_id TEXT NOT NULL, step INTEGER, loss REAL)")
        raw.execute("INSERT INTO runs VALUES ('old', 1.0, ?)", (RunInfo(id="old", started_at=1.0).model_dump_json(),))
        raw.executemany("INSERT INTO steps VALUES ('old', ?, ?)", [(1, 0.25), (0, 0.5)])
    before = _digest(db)
    with RunStore(db, read_only=True) as store:
        ev = store.load_evidence(store.resolve("old"))
        assert store.load_report("old") is None and store.llm_analyses("old") == []
        assert store.run_version("old")
    assert ev.steps.loss.tolist() == [0.5, 0.25]
    assert ev.steps.backward_calls.tolist() == [0, 0]  # old rows read as the field's default
    assert len(ev.validation.step) == 0
    assert _digest(db) == before


# --- the commands -------------------------------------------------------------------------------


def test_runs_and_report_say_what_is_wrong_without_a_traceback(tmp_path):
    for kind, db in _bad_stores(tmp_path).items():
        for command in (["runs"], ["report"], ["report", "old"]):
            if kind == "middle" and command == ["runs"]:
                continue  # the runs table itself is readable
            proc = _modeldebug(*command, cwd=db.parent.parent)
            assert proc.returncode == 1, (kind, command, proc.stderr)
            assert "Traceback" not in proc.stderr and "error:" in proc.stderr, (kind, command, proc.stderr)
            assert "--store" in proc.stderr, (kind, command, proc.stderr)


def test_runs_and_report_write_nothing(tmp_path):
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE users (a)")
    before = _digest(foreign)
    proc = _modeldebug("runs", "--store", str(foreign), cwd=tmp_path)
    assert proc.returncode == 1 and "not a modeldebug run store" in proc.stderr and "Traceback" not in proc.stderr
    assert _digest(foreign) == before
    with sqlite3.connect(foreign) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)

    db = tmp_path / ".modeldebug" / "runs.db"
    with RunStore(db) as store:
        store.create_run(RunInfo(id="r1", command=["python", "t.py"], status="completed"))
        store.add("r1", StepRecord(step=0, loss=1.0))
    before = _digest(db)
    for command in (["runs"], ["report", "r1"]):
        proc = _modeldebug(*command, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert _digest(db) == before  # `report` on a run without a saved report does not save one


@pytest.mark.parametrize("kind", ["random", "directory", "middle", "newer", "foreign"])
def test_run_on_a_bad_store_keeps_the_run_and_says_where(tmp_path, kind):
    if kind in ("newer", "foreign"):
        db = tmp_path / kind / ("other.sqlite" if kind == "foreign" else ".modeldebug/runs.db")
        db.parent.mkdir(parents=True)
        with sqlite3.connect(db) as raw:
            raw.execute("CREATE TABLE users (a)" if kind == "foreign" else "CREATE TABLE runs (id TEXT, info TEXT)")
            raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        db = _bad_stores(tmp_path)[kind]
    project = db.parent.parent if kind != "foreign" else db.parent
    before = None if kind == "directory" else _digest(db)
    store_args = ["--store", str(db)] if kind == "foreign" else []
    proc = _modeldebug("run", "--json", "r.json", *store_args, "--", sys.executable, SCRIPT, cwd=project, STEPS="5")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    report = Report.model_validate_json((project / "r.json").read_text())
    assert report.run.status == "completed" and report.run.steps == 5
    side = side_path(db, report.run.id)
    assert f"recorded in {side.relative_to(project) if kind != 'foreign' else side}" in proc.stderr.replace("\n", " ")
    with RunStore(side, read_only=True) as store:
        assert len(store.load_evidence(report.run.id).steps.step) == 5
        assert store.load_report(report.run.id) is not None
    if kind == "middle":
        assert "runs.db is damaged" in proc.stderr
    elif before is not None:
        assert _digest(db) == before
