"""Real 2-process DDP training (torchrun, gloo, CPU) under `modeldebug run`: each planted fault is
found and attributed to the rank it was planted on; a healthy run has no medium/high finding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeldebug.collect.distributed import MAX_EVERY, MIN_EVERY, gather_gap, is_launcher, rank_run_id
from modeldebug.store import RunStore
from modeldebug.types import Report

SCRIPT = str(Path(__file__).parent / "scripts" / "ddp_train.py")
pytestmark = pytest.mark.skipif(
    not __import__("torch").distributed.is_available(), reason="torch.distributed is not available"
)


def _run(tmp_path, fault, every="5", **env):
    full = dict(os.environ, OMP_NUM_THREADS="1", FAULT=fault, MODELDEBUG_DIST_EVERY=every)
    full.update({k: str(v) for k, v in env.items()})
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--",
           sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", SCRIPT]
    proc = subprocess.run(cmd, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300)
    (tmp_path / "stderr.txt").write_text(proc.stderr)
    data = json.loads((tmp_path / "r.json").read_text())
    import jsonschema

    jsonschema.validate(data, Report.json_schema())
    return proc, Report.model_validate(data)


def _errors(proc) -> str:
    """The lines of the job's output that say what failed (the report panels come after them)."""
    return "\n".join(l for l in proc.stderr.splitlines() if "rror" in l or "ailed" in l or "signal" in l)[-4000:]


def _store(tmp_path):
    return RunStore(tmp_path / ".modeldebug" / "runs.db")


def _kinds(rep, severities=("high", "medium")):
    return [f.kind for f in rep.findings if f.severity in severities]


def test_healthy_run_every_rank_watched(tmp_path):
    proc, rep = _run(tmp_path, "healthy")
    assert proc.returncode == 0, _errors(proc)
    assert _kinds(rep) == [], [f.message for f in rep.findings]
    assert rep.run.status == "completed" and rep.run.steps == 60
    with _store(tmp_path) as store:
        runs = {r.id: r for r in store.list_runs()}
        assert set(runs) == {rep.run.id, rank_run_id(rep.run.id, 1)}  # one run per rank, no launcher run
        assert store.resolve("latest") == rep.run.id
        ev = store.load_evidence(rep.run.id)
        ev1 = store.load_evidence(rank_run_id(rep.run.id, 1))
    assert len(ev1.steps) == 60 and runs[rank_run_id(rep.run.id, 1)].status == "completed"
    # Rank 0 gathered both ranks' summaries every 5 steps; the parameters stayed bitwise equal.
    assert sorted(set(ev.ranks.rank.tolist())) == [0, 1]
    assert sorted(set(ev.ranks.step.tolist())) == list(range(0, 60, 5))
    assert not ev.ranks.desync.any() and (ev.ranks.checksum_rel_diff == 0).all()
    assert {e["data"]["rank"] for e in ev.events if e["type"] == "rank"} == {0}


def test_desync_on_rank_1(tmp_path):
    proc, rep = _run(tmp_path, "desync", DESYNC_AT=25)
    assert proc.returncode == 0, _errors(proc)
    [f] = [f for f in rep.findings if f.kind == "distributed_desync"]
    assert f.severity == "high" and f.evidence["rank"] == 1
    assert f.step == 30 and f.evidence["last_step_in_sync"] == 25  # the change came after step 25
    assert f.evidence["parameter"] == "module.fc2.weight"
    assert "straggler_rank" not in _kinds(rep)


def test_straggler_rank_1(tmp_path):
    proc, rep = _run(tmp_path, "straggler", SLEEP_S=0.03, STEPS=40)
    assert proc.returncode == 0, _errors(proc)
    [f] = [f for f in rep.findings if f.kind == "straggler_rank"]
    assert f.evidence["rank"] == 1 and f.evidence["excess_s"] > 0.015
    assert "distributed_desync" not in _kinds(rep)


def test_nan_starts_on_rank_1(tmp_path):
    proc, rep = _run(tmp_path, "nan", NAN_AT=25)
    assert proc.returncode == 0, _errors(proc)
    nan = [f for f in rep.findings if f.kind == "nan_or_inf"]
    assert len(nan) == 1 and nan[0].evidence["rank"] == 1 and nan[0].evidence["rank_step"] == 25
    assert "rank 1" in nan[0].message


def test_crashing_rank_named_first(tmp_path):
    proc, rep = _run(tmp_path, "crash", CRASH_AT=25)
    assert proc.returncode != 0
    assert rep.run.status == "crashed"
    [f] = [f for f in rep.findings if f.kind == "rank_failure"]
    assert f.evidence["rank"] == 1 and f.evidence["error_type"] == "ValueError"
    with _store(tmp_path) as store:  # the dead rank's evidence is in the store
        ev1 = store.load_evidence(rank_run_id(rep.run.id, 1))
    assert len(ev1.steps) == 25 and ev1.run.status == "crashed"


@pytest.fixture
def busy_machine():
    """One CPU-burning process per core beside the job (bounded: it ends by itself after 5 minutes)."""
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 300\n"
                                 "while time.time() < end: pass"]) for _ in range(os.cpu_count() or 1)]
    yield
    for p in burners:
        p.kill()
        p.wait()


def test_findings_do_not_depend_on_machine_load(tmp_path, busy_machine):
    """Under the default schedule (gathers counted in steps, not set from measured times) the same
    desync is found at the same gather on a loaded machine: gathers at steps 0, 10, 20, 30, ..."""
    proc, rep = _run(tmp_path / "desync", "desync", every="", DESYNC_AT=25)
    assert proc.returncode == 0, _errors(proc)
    [f] = [f for f in rep.findings if f.kind == "distributed_desync"]
    assert f.evidence["rank"] == 1 and f.evidence["parameter"] == "module.fc2.weight"
    assert f.step == 30 and f.evidence["last_step_in_sync"] == 20
    with _store(tmp_path / "desync") as store:
        ev = store.load_evidence(rep.run.id)
    assert sorted(set(ev.ranks.step.tolist())) == [0, 10, 20, 30, 40, 50]
    assert "straggler_rank" not in _kinds(rep)

    proc, rep = _run(tmp_path / "straggler", "straggler", every="", SLEEP_S=0.03, STEPS=40)
    assert proc.returncode == 0, _errors(proc)
    [f] = [f for f in rep.findings if f.kind == "straggler_rank"]
    assert f.evidence["rank"] == 1 and f.evidence["excess_s"] > 0.015
    assert "distributed_desync" not in _kinds(rep)


def test_gather_gap_counts_steps():
    gathers = [0]
    while gathers[-1] < 100_000:
        gathers.append(gathers[-1] + gather_gap(gathers[-1]))
    gaps = [b - a for a, b in zip(gathers, gathers[1:])]
    assert gathers[:9] == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert all(g % MIN_EVERY == 0 and MIN_EVERY <= g <= MAX_EVERY for g in gaps)
    # a fault is seen at the latest a quarter of the run (or MIN_EVERY steps) after it began
    assert all(b - a <= max(MIN_EVERY, a // 4) for a, b in zip(gathers, gathers[1:]))
    assert len([s for s in gathers if s <= 4000]) < 40  # O(log N) gathers, not N / 10


@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/python3", "/venv/bin/torchrun", "--nproc-per-node", "2", "t.py"], True),
    (["python", "-m", "torch.distributed.run", "t.py"], True),
    (["python", "-m", "torch.distributed.launch", "t.py"], True),
    (["python", "-u", "t.py"], False),
    (["python", "train_torchrun.py"], False),
], ids=["torchrun", "python-m-run", "python-m-launch", "worker", "script-name"])
def test_launcher_detection(argv, expected):
    assert is_launcher(argv) is expected
