"""Real 2-process FSDP training (torchrun, gloo, CPU) under `modeldebug run`: FSDP1 (flat parameters
and use_orig_params) and FSDP2 (fully_shard, DTensor parameters) healthy runs raise no alarm (each
rank's shard differs by design; empty shards are no frozen weights), FSDP2 stays watched, the
gradient norm recorded is the norm of the whole gradient, and a planted learning rate is found."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modeldebug.collect.distributed import rank_run_id
from modeldebug.store import RunStore
from modeldebug.types import Report

SCRIPTS = Path(__file__).parent / "scripts"
SCRIPT = str(SCRIPTS / "fsdp_train.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _run(tmp_path, wrap, fault="healthy", stopped=False, **env):
    tmp_path.mkdir(parents=True, exist_ok=True)
    full = dict(os.environ, OMP_NUM_THREADS="1", WRAP=wrap, FAULT=fault, MODELDEBUG_DIST_EVERY="10")
    full.update({k: str(v) for k, v in env.items()})
    cmd = [sys.executable, "-m", "modeldebug", "run", "--json", "r.json", "--",
           sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", SCRIPT]
    proc = subprocess.run(cmd, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert ("stopped watching" in proc.stderr) == stopped, proc.stderr[-4000:]
    return Report.model_validate(json.loads((tmp_path / "r.json").read_text()))


def _evidence(tmp_path, run_id):
    with RunStore(tmp_path / ".modeldebug" / "runs.db") as store:
        return store.load_evidence(run_id), store.load_evidence(rank_run_id(run_id, 1))


def _serious(rep):
    return [f"{f.kind}: {f.message}" for f in rep.findings if f.severity in ("high", "medium")]


def _script():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import fsdp_train
    finally:
        sys.path.remove(str(SCRIPTS))
    return fsdp_train


def _unsharded_norms(steps, lr=0.1):
    """The same training on one unsharded copy: the mean of the two ranks' losses (what FSDP's
    averaged gradients are the gradient of), and the norm of its full gradient at every step."""
    fsdp_train = _script()
    torch.manual_seed(0)
    net = fsdp_train.Net()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    out = []
    for step in range(steps):
        opt.zero_grad()
        loss = sum(nn.functional.cross_entropy(net(x), y) for x, y in (fsdp_train.batch(step, r) for r in (0, 1))) / 2
        loss.backward()
        out.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in net.parameters())))
        opt.step()
    return out


@pytest.mark.parametrize("wrap", ["fsdp2", "fsdp1", "fsdp1_orig"])
def test_healthy_fsdp_no_alarm_and_global_grad_norm(tmp_path, wrap):
    norms_path = tmp_path / "norms.json"
    rep = _run(tmp_path, wrap, NORMS=norms_path)
    assert rep.run.status == "completed" and rep.run.steps == 40
    assert _serious(rep) == []
    ev0, ev1 = _evidence(tmp_path, rep.run.id)
    assert len(ev1.steps) == 40

    # The recorded norm is the whole gradient's: what clip_grad_norm_ returns, what the gathered
    # full gradients give, and what an unsharded copy trained on both ranks' batches gets.
    script = json.loads(norms_path.read_text())
    recorded0 = ev0.steps.grad_norm.tolist()
    recorded1 = ev1.steps.grad_norm.tolist()
    clip = [r["clip"] for r in script]
    assert recorded0 == pytest.approx(clip, rel=1e-5)
    assert recorded1 == pytest.approx(clip, rel=1e-5)  # every rank knows the global norm
    assert recorded0 == pytest.approx([r["full"] for r in script], rel=1e-5)
    assert recorded0 == pytest.approx(_unsharded_norms(40), rel=1e-3)

    # Ranks are compared on what they hold whole, and nothing is replicated here: never a desync.
    assert sorted(set(ev0.ranks.rank.tolist())) == [0, 1]
    assert not ev0.ranks.desync.any()
    # Per-parameter statistics describe this rank's shard (none for an empty one): without the
    # all-reduce a rank's norm would be its shard's, smaller than the whole gradient's.
    sampled = ev0.param_stats
    step = int(sampled.step.min())
    shard_norm = math.sqrt(float(np.nansum(sampled[sampled.step == step].grad_norm.astype(float) ** 2)))
    assert 0 < shard_norm < 0.99 * float(ev0.steps[ev0.steps.step == step].grad_norm[0])
    if wrap == "fsdp2":  # a parameter is described whole; its statistics count the values measured
        info = ev0.params["fc1.weight"]
        assert (info.shape, info.numel, info.shard_numel, info.measured_numel) == ([32, 16], 512, 256, 256)
        assert step == 0  # before the first update: rank 0's shard is rows 0-15 of the initial weight
        torch.manual_seed(0)
        initial = _script().Net().fc1.weight.detach()
        [norm] = sampled[(sampled.step == 0) & (sampled.param == "fc1.weight")].norm
        assert norm == pytest.approx(float(initial[:16].norm()), rel=1e-6)


def test_fsdp2_high_learning_rate_found(tmp_path):
    rep = _run(tmp_path, "fsdp2", fault="high_lr")
    causes = [(f.kind, f.severity, f.causes[0] if f.causes else None) for f in rep.findings]
    assert any(sev in ("high", "medium") and cause == "learning_rate_too_high" for _, sev, cause in causes), causes
    assert "distributed_desync" not in [k for k, _, _ in causes]


def test_replicated_parameters_still_compared(tmp_path):
    """A module FSDP1 is told to ignore stays whole on every rank and FSDP does not average its
    gradients: its replicas drift apart, and the desync names it."""
    rep = _run(tmp_path, "fsdp1_ignored")
    [f] = [f for f in rep.findings if f.kind == "distributed_desync"]
    assert f.severity == "high" and "fc3" in f.evidence["parameter"], f.evidence
    # Named by the user's module path, and the message says what the run used.
    assert f.evidence["parameter"] in ("fc3.weight", "fc3.bias") and f.evidence["parallel"] == "FSDP", f.evidence
    assert "Under FSDP" in f.message and "DDP" not in f.message, f.message


def test_detection_harness_launches_fault_scripts_with_torchrun():
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    try:
        import detection
    finally:
        sys.path.pop(0)
    found = detection.cases(only="fsdp")
    assert {c.name for c in found} >= {"loss_not_decreasing__fsdp2_tabular_adam_lr_far_too_high",
                                       "healthy__fsdp2_tabular_adam"}
    for case in found:
        assert case.processes == 2
        assert detection.launcher(case)[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    [plain] = detection.cases(only="^healthy__cnn_sgd_steplr$")
    assert plain.processes == 1 and detection.launcher(plain) == [sys.executable]


def test_hsdp_replicas_compared(tmp_path):
    """FSDP2 on a mesh of 2 replicas (shards of one rank): the replicas hold the same parameters and
    stay equal until rank 1's are changed; the desync is found and named."""
    rep = _run(tmp_path, "hsdp_replicas", fault="desync", DESYNC_AT=25)
    [f] = [f for f in rep.findings if f.kind == "distributed_desync"]
    assert f.severity == "high" and f.evidence["rank"] == 1 and f.evidence["parameter"] == "fc3.weight"
    assert f.step == 30 and f.evidence["last_step_in_sync"] == 20
    ev0, _ = _evidence(tmp_path, rep.run.id)
    before = ev0.ranks[ev0.ranks.step <= 20]
    assert len(before) and (before.checksum_rel_diff == 0).all()


def test_monitor_stopping_on_one_rank_does_not_stall_training(tmp_path):
    """Rank 1's monitor stops at step 5 (an internal error there alone): rank 0 waits for it in the
    monitor's all-reduce no longer than the collectives' timeout, then trains on unwatched by them."""
    import time

    started = time.monotonic()
    rep = _run(tmp_path, "fsdp2", fault="monitor_breaks", stopped=True, MODELDEBUG_DIST_TIMEOUT=3)
    assert time.monotonic() - started < 200
    assert rep.run.status == "completed" and rep.run.steps == 40
    ev0, ev1 = _evidence(tmp_path, rep.run.id)
    assert len(ev1.steps) == 5  # rank 1 watched up to its error
    errors = [e for e in ev0.events if e["type"] == "rank_gather_error"]
    assert len(errors) == 1, [e["type"] for e in ev0.events]
