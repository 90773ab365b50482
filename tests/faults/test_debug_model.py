"""`ModelDebuggingAgent.debug_model` on the fault suite's own scripts, taken as they are.

Each script runs in this process until the start of its second training step (script_capture.py:
exec of the unmodified file, stopped from inside ``torch.autograd.backward``); its model,
optimizer, loss module and data are picked out of its globals by type and handed to debug_model.

- A fault that lives in those objects (initialisation, learning rate, activations, data, frozen or
  orphaned parameters, the loss, a slow module or Dataset) must be among the probe's findings.
- A fault that lives in the script's own training loop cannot be seen by a probe that trains a
  copy with a loop of its own: each such script is listed in LOOP with the reason, and two of them
  are checked instead through ``debug_model(run=...)`` on a run recorded by ``modeldebug run``.
- A fault that shows only in the loss over the script's whole run, and that a probe from the
  current weights meets on some random trajectories only, is listed in TRAJECTORY with what was measured.
- The memory_pressure scripts need CUDA (skipped without it; DEVICE says why one is not asserted).
- A healthy script gives no finding of severity medium or high.
- For every script the user's model and optimizer state (and the gradients) are bit-for-bit what
  they were before debug_model, and so is the torch random stream.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import modeldebug as md
from script_capture import capture
from test_fault_suite import planted

HERE = Path(__file__).parent
SCRIPTS = sorted(HERE.glob("*__*.py"))
PROFILE = {"profiling_config": {"warmup": 1, "iterations": 3}}  # the tools' timing loop, short; the probe as users get it

# The probe trains a copy with its own loop: zero_grad, forward, loss, backward, step, every step, keeping nothing.
LOOP = {
    "gradient_accumulation__lstm_zero_grad_outside_loop":
        "zero_grad() runs once before the loop; the probe's loop zeroes the gradients every step",
    "gradient_accumulation__mlp_no_zero_grad": "the loop never calls zero_grad(); the probe's loop does",
    "input_bottleneck__per_batch_augmentation_loop":
        "the slow per-image augmentation runs in the loop, not in a Dataset or DataLoader the probe reads",
    "memory_growth__autoencoder_codes_with_graph":
        "the loop keeps every batch's latent codes with their graphs alive; the probe keeps nothing",
    "memory_growth__eval_loss_without_no_grad":
        "the loop sums evaluation losses with their graphs; the probe runs no evaluation",
    "nan_or_inf__manual_bce_log_of_zero":
        "the loss is an expression written in the loop (log of a sigmoid), not a callable the probe can be given",
    "overfitting__cnn_small_dataset_dataloader":
        "shows against the validation loss the loop computes over 40 epochs; the probe has no validation data",
    "overfitting__mlp_tiny_dataset":
        "shows against the validation loss the loop computes over 400 steps; the probe has no validation data",
    "unchanged_weights__detached_encoder_features":
        "the .detach() sits in the loop between two separate modules: there is no one model to hand the probe",
    "unchanged_weights__missing_optimizer_step": "the loop never calls optimizer.step(); the probe's loop does",
}
# Not asserted either way: the probe's trajectory differs from the script's, and the rule's margin is thin.
TRAJECTORY = {
    "oscillating_loss__mlp_regression_sgd_high_lr":
        "the swings appear once the loss nears its floor; a probe from the current weights met them in 3 of 6 "
        "random trajectories at 100 steps, 4 of 4 at 200",
    "oscillating_loss__nonlinear_regression_dataloader":
        "its loss swings 1.6-2.6x its median against the rule's 2.5x: a probe met that in 0 of 4 trajectories "
        "at 60 steps, 1 of 4 at 200 (the script's own run, seed 0, does)",
}
# The memory_pressure scripts need CUDA (skipped without it). memory_pressure__dataset_cached_on_gpu is
# asserted: its cache still fills the device while the probe runs in the same process (found, medium, on
# an H100). This one is not:
DEVICE = {
    "memory_pressure__max_batch_probe_transformer":
        "the pressure comes from the loop doubling the batch until it runs out of memory, after the capture "
        "point, and the model and its head are two top-level modules the loop joins (the probe gets the "
        "model alone and reports the shape error)",
}
STORED = ["gradient_accumulation__mlp_no_zero_grad", "unchanged_weights__missing_optimizer_step"]


def _case(path: Path):
    kind, _ = planted(path)
    marks = []
    if "requires: cuda" in path.read_text():
        marks.append(pytest.mark.skipif(not torch.cuda.is_available(),
                                        reason="needs CUDA: the script fills the GPU's memory on purpose"))
    return pytest.param(path, kind, id=path.stem, marks=marks)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes: NaN equals NaN, -0.0 differs from 0.0."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else t


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(bits(a), bits(b)))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN hyperparameters compare equal


def snapshot(model, opt):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [m.training for m in model.modules()])


@pytest.mark.parametrize("path,kind", [_case(p) for p in SCRIPTS])
def test_debug_model_on_the_script(path, kind, monkeypatch):
    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    cap = capture(path)
    name = path.stem
    if name == "unchanged_weights__detached_encoder_features":
        assert cap.problems, "two top-level modules share the optimizer: the capture must say so"
    else:
        assert cap.model is not None and cap.optimizer is not None, cap.problems
    assert cap.backward_calls == 2 and cap.optimizer_steps <= 1  # stopped at the start of the second step
    model, opt = cap.model, cap.optimizer
    before = snapshot(model, opt)
    torch.manual_seed(0)  # the probe's batches come from the global stream; fixed, so a run is repeatable
    rng = torch.get_rng_state()
    r = md.ModelDebuggingAgent(md.DebuggingConfig(analysis_level="detailed")).debug_model(md.DebuggingRequest(
        model=model, data=cap.data, loss_fn=cap.loss_fn, optimizer=opt, analysis_config=PROFILE))

    assert same(snapshot(model, opt), before), "debug_model changed the user's model, optimizer or gradients"
    assert torch.equal(torch.get_rng_state(), rng), "debug_model advanced the user's random stream"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    found = [(f.kind, f.severity) for f in r.issues]
    if kind == "none":
        assert not [f for f in found if f[1] in ("high", "medium")], found
    elif name in LOOP or name in TRAJECTORY or name in DEVICE:
        pass  # out of the probe's sight, or seen by chance: nothing to assert about the findings
    else:
        assert kind in [k for k, _ in found], f"the probe missed {kind}: {found}; notices {r.notices}"


def test_the_lists_name_real_broken_scripts():
    names = {p.stem for p in SCRIPTS}
    assert set(LOOP) <= names and set(TRAJECTORY) <= names and set(DEVICE) <= names and set(STORED) <= set(LOOP)
    assert not set(LOOP) & set(TRAJECTORY)
    assert all(not n.startswith("healthy") for n in [*LOOP, *TRAJECTORY, *DEVICE])
    assert set(DEVICE) <= {n for n in names if "requires: cuda" in (HERE / f"{n}.py").read_text()}


@pytest.mark.parametrize("name", STORED)
def test_loop_faults_are_found_in_the_stored_run(name, tmp_path, monkeypatch):
    """What the probe cannot see, debug_model finds in the run `modeldebug run` recorded of the script itself."""
    from typer.testing import CliRunner

    from modeldebug.cli import app

    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    path = HERE / f"{name}.py"
    kind, cause = planted(path)
    store = str(tmp_path / "runs.db")
    res = CliRunner().invoke(app, ["run", "--store", store, "--", sys.executable, str(path)])
    assert res.exit_code == 0, res.output
    r = md.ModelDebuggingAgent().debug_model(md.DebuggingRequest(run="latest", store=store))
    hits = [f for f in r.issues if f.kind == kind]
    assert hits and cause in hits[0].causes, [(f.kind, f.causes) for f in r.issues]
