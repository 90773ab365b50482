"""`modeldebug fix`'s diffs: made at the lines the probe saw, applied with `git apply`, and the fixed
script then runs clean (issue 18). Each script is a copy of a fault script in a tmp git repository;
its probe window records the sites, and the fixed copy runs one window under the monitor.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modeldebug.fixes import candidates, patch, verify
from modeldebug.fixes.patch import Sites

FAULTS = Path(__file__).parents[1] / "faults"


def _repo(tmp_path: Path, name: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(FAULTS / name, repo / "train.py")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def _probe(repo: Path, steps: int) -> verify.Window:
    window = verify._window([sys.executable, str(repo / "train.py")], steps, None, repo / "runs.db", None,
                            sites=repo / "sites.json")
    window.sites = Sites.load(repo / "sites.json")
    assert window.exit_code == 0 and window.sites is not None, window.log
    return window


def _apply(repo: Path, diff: str) -> None:
    (repo / "fix.diff").write_text(diff)
    done = subprocess.run(["git", "apply", "fix.diff"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + diff


@pytest.mark.parametrize("name, kind, planted, steps, expected", [
    ("loss_not_decreasing__mlp_adam_lr_far_too_high.py", "lr_scale", "loss_not_decreasing", 80,
     "-optimizer = torch.optim.Adam(model.parameters(), lr=1.0)\n+optimizer = torch.optim.Adam(model.parameters(), lr=0.01)\n"),
    ("gradient_accumulation__mlp_no_zero_grad.py", "zero_grad", "gradient_accumulation", 60,
     "+    optimizer.zero_grad()\n     loss.backward()"),
    ("unchanged_weights__frozen_encoder_by_mistake.py", "train_params", "unchanged_weights", 60,
     "-model.embed.requires_grad_(False)  # fault: frozen for a warm-up that never ends\n-model.encoder.requires_grad_(False)\n"),
])
def test_the_diff_applies_and_the_fixed_script_runs_clean(tmp_path, monkeypatch, name, kind, planted, steps, expected):
    repo = _repo(tmp_path, name)
    monkeypatch.chdir(repo)
    probe = _probe(repo, steps)
    assert planted in probe.kinds()
    roots = [s.root for s in probe.report.stories() if s.root.source == "rules"]
    tried = [c for c in candidates.build(roots, 8) if c.spec["kind"] == kind][-1]  # lr: the x0.01 one
    diff, why = patch.make(tried.spec, probe.sites)
    assert diff is not None, why
    assert diff.startswith("--- a/train.py\n+++ b/train.py\n") and expected in diff, diff
    _apply(repo, diff)
    fixed = verify._window([sys.executable, str(repo / "train.py")], steps, None, repo / "runs.db", None)
    assert fixed.exit_code == 0, fixed.log
    assert planted not in fixed.kinds(), fixed.kinds()


def _sites(tmp_path: Path, source: str, **data) -> Sites:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source))
    file = str(script)
    lines = script.read_text().splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    optimizers = [{"file": file, "line": at(o[0]), "user": True, "class": o[1], "module": "torch.optim",
                   "default_lr": o[2], "id": 1} for o in data.get("optimizers", [])]
    schedulers = [{"file": file, "line": at(s[0]), "user": True, "class": s[1], "optimizer": 1}
                  for s in data.get("schedulers", [])]
    backward = [{"file": file, "line": at(b[0]), "user": True, "calls": b[1]} for b in data.get("backward", [])]
    step = [{"file": file, "line": at(s), "user": True, "calls": 3} for s in data.get("step", [])]
    zero_grad = [{"file": file, "line": at(z), "user": True, "calls": 3} for z in data.get("zero_grad", [])]
    return Sites({"optimizers": optimizers, "schedulers": schedulers, "backward": backward, "step": step,
                  "zero_grad": zero_grad, "steps": 3, "script": file})


ONE_CYCLE = """
import torch
opt = torch.optim.SGD(
    net.parameters(),
    momentum=0.9,
)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=base * 2, total_steps=100)
"""


def test_an_optimizer_without_lr_gets_its_default_scaled_and_a_one_cycle_its_max_lr(tmp_path):
    sites = _sites(tmp_path, ONE_CYCLE, optimizers=[("torch.optim.SGD(", "SGD", 0.001)],
                   schedulers=[("OneCycleLR", "OneCycleLR")])
    diff, why = patch.make({"kind": "lr_scale", "factor": 0.1}, sites, tmp_path)
    assert why == "" and "+    momentum=0.9, lr=0.0001,\n" in diff and "max_lr=(base * 2) * 0.1" in diff, diff


AMP_ACCUMULATING = """
import torch
from torch import nn
for i, (x, y) in enumerate(loader):
    with torch.autocast("cpu"):
        loss = crit(model(x), y) / 4
    scaler.scale(loss).backward()
    if (i + 1) % 4 == 0:
        scaler.step(opt)
        scaler.update()
"""


def test_zero_grad_and_clipping_in_an_accumulating_amp_loop_go_by_the_step(tmp_path):
    sites = _sites(tmp_path, AMP_ACCUMULATING, optimizers=[], backward=[("backward()", 12)],
                   step=["scaler.step(opt)"])
    diff, _ = patch.make({"kind": "zero_grad"}, sites, tmp_path)
    assert "         scaler.step(opt)\n+        opt.zero_grad()\n" in diff, diff
    diff, why = patch.make({"kind": "clip_grad_norm", "max_norm": 1.0}, sites, tmp_path)
    assert diff is not None, why
    assert ("+        scaler.unscale_(opt)\n+        torch.nn.utils.clip_grad_norm_("
            '[p for group in opt.param_groups for p in group["params"]], 1.0)\n         scaler.step(opt)') in diff, diff


def test_no_diff_when_the_line_is_in_a_library_or_shares_its_line(tmp_path):
    sites = _sites(tmp_path, "import torch\nloss.backward(); opt.step()\n", backward=[("loss.backward", 3)],
                   step=["opt.step()"])
    assert patch.make({"kind": "zero_grad"}, sites, tmp_path) == (None, "train.py:2 holds more than one statement")
    library = Sites({"optimizers": [{"file": "/venv/lib/python3.11/site-packages/transformers/trainer.py",
                                     "line": 10, "user": False, "class": "AdamW", "module": "torch.optim"}],
                     "backward": [{"file": "/venv/lib/site-packages/lightning/pytorch/loops/x.py", "line": 3,
                                   "user": False, "calls": 3}]})
    assert patch.make({"kind": "lr_scale", "factor": 0.1}, library) == (
        None, "the optimizer is built inside a library (transformers)")
    assert patch.make({"kind": "clip_grad_norm"}, library) == (None, "backward() is called inside a library (lightning)")
    assert patch.make({"kind": "somebody_elses"}, library)[0] is None


LAYERS = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))
        self.probs = nn.Softmax(dim=1)

    def forward(self, x):
        return self.probs(self.body(x))

model = Net()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
"""


def test_the_layer_candidates_are_diffs_at_the_lines_that_build_the_layers(tmp_path):
    sites = _sites(tmp_path, LAYERS, optimizers=[("optimizer = ", "AdamW", 1e-3)])
    sites.data["optimizers"][0]["default_weight_decay"] = 0.01
    diff, _ = patch.make({"kind": "leaky_relu", "negative_slope": 0.01}, sites, tmp_path)
    assert "nn.LeakyReLU(0.01, inplace=True)" in diff, diff
    diff, _ = patch.make({"kind": "loss_input", "layer": "probs", "loss": "cross_entropy"}, sites, tmp_path)
    assert "-        self.probs = nn.Softmax(dim=1)\n+        self.probs = nn.Identity()\n" in diff, diff
    diff, _ = patch.make({"kind": "loss_input", "layer": "probs", "loss": "nll_loss"}, sites, tmp_path)
    assert "+        self.probs = nn.LogSoftmax(dim=1)\n" in diff, diff
    diff, _ = patch.make({"kind": "weight_decay_scale", "factor": 0.1}, sites, tmp_path)
    assert "+optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.001)\n" in diff, diff
    diff, why = patch.make({"kind": "reinit", "scheme": "kaiming"}, sites, tmp_path)
    assert diff is not None, why
    assert "+for layer in model.modules():  # re-initialised before training\n" in diff
    assert '+        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")\n' in diff
    assert diff.index("+for layer in model.modules()") < diff.index(" optimizer = torch.optim.AdamW(")
    namespace = {}
    exec(compile(_applied(tmp_path, diff), "train.py", "exec"), namespace)  # the re-initialising code runs
    diff, why = patch.make({"kind": "standardize_inputs"}, sites, tmp_path)
    assert diff is None and "where it is loaded" in why


def _applied(tmp_path: Path, diff: str) -> str:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "fix.diff").write_text(diff)
    subprocess.run(["git", "apply", "fix.diff"], cwd=tmp_path, check=True)
    return (tmp_path / "train.py").read_text()


def test_lightning_and_the_hf_trainer_get_their_own_arguments_changed(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import lightning as L\ntrainer = L.Trainer(max_epochs=3)\ntrainer.fit(model, loader)\n")
    inside = {"file": "/venv/lib/python3.11/site-packages/lightning/pytorch/core/module.py", "line": 1,
              "user": False, "calls": 3}
    sites = Sites({"optimizers": [], "backward": [inside], "step": [], "steps": 3, "script": str(script)})
    diff, why = patch.make({"kind": "clip_grad_norm", "max_norm": 1.0}, sites, tmp_path)
    assert "+trainer = L.Trainer(max_epochs=3, gradient_clip_val=1.0)\n" in diff, why
    script.write_text("from transformers import Trainer, TrainingArguments\n"
                      "args = TrainingArguments(output_dir='out', learning_rate=3.0, max_grad_norm=10)\n")
    built = {"file": "/venv/lib/python3.11/site-packages/transformers/trainer.py", "line": 1, "user": False,
             "class": "AdamW", "module": "torch.optim.adamw", "default_lr": 3.0}
    sites = Sites({"optimizers": [built], "backward": [{**inside, "file": built["file"]}], "step": [], "steps": 3,
                   "script": str(script)})
    diff, why = patch.make({"kind": "lr_scale", "factor": 0.1}, sites, tmp_path)
    assert "learning_rate=0.3, max_grad_norm=10)" in diff, why
    diff, why = patch.make({"kind": "clip_grad_norm", "max_norm": 1.0}, sites, tmp_path)
    assert "learning_rate=3.0, max_grad_norm=1.0)" in diff, why
    assert patch.make({"kind": "zero_grad"}, sites, tmp_path) == (None, "backward() is called inside a library (transformers)")


def test_accelerate_clips_through_the_accelerator(tmp_path):
    source = "import torch\nfor x, y in loader:\n    loss = crit(net(x), y)\n    accelerator.backward(loss)\n    opt.step()\n"
    sites = _sites(tmp_path, source, optimizers=[], backward=[("accelerator.backward", 3)], step=["opt.step()"])
    diff, why = patch.make({"kind": "clip_grad_norm", "max_norm": 1.0}, sites, tmp_path)
    assert ('+    accelerator.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], 1.0)\n'
            "     opt.step()") in diff, why


CLIPS_TOO_EARLY = """
import torch
from torch import nn
for x, y in loader:
    optimizer.zero_grad()
    loss = crit(model(x), y)
    nn.utils.clip_grad_norm_(model.parameters(),
                             max_norm)
    loss.backward()
    optimizer.step()
"""


def test_a_clip_made_before_backward_moves_to_just_before_the_step(tmp_path):
    sites = _sites(tmp_path, CLIPS_TOO_EARLY, optimizers=[], backward=[("loss.backward()", 3)], step=["optimizer.step()"])
    diff, why = patch.make({"kind": "clip_after_backward", "function": "clip_grad_norm_"}, sites, tmp_path)
    assert diff is not None, why
    assert _applied(tmp_path, diff).endswith(
        "    loss.backward()\n    nn.utils.clip_grad_norm_(model.parameters(),\n                             max_norm)\n"
        "    optimizer.step()\n"), diff


ZEROED_TOO_LATE = """
for x, y in loader:
    loss = crit(model(x), y)
    loss.backward()
    if log_every:
        opt.zero_grad(set_to_none=True)
    opt.step()
"""


def test_a_zero_grad_between_backward_and_step_moves_before_backward(tmp_path):
    sites = _sites(tmp_path, ZEROED_TOO_LATE, backward=[("loss.backward()", 3)], step=["opt.step()"],
                   zero_grad=["opt.zero_grad("])
    diff, why = patch.make({"kind": "move_zero_grad"}, sites, tmp_path)
    assert diff is not None, why
    assert _applied(tmp_path, diff).endswith(
        "    loss = crit(model(x), y)\n    opt.zero_grad(set_to_none=True)\n    loss.backward()\n"
        "    if log_every:\n        pass\n    opt.step()\n"), diff
    none_seen = _sites(tmp_path, ZEROED_TOO_LATE, backward=[("loss.backward()", 3)], step=["opt.step()"])
    assert patch.make({"kind": "move_zero_grad"}, none_seen, tmp_path) == (
        None, "the probe saw no zero_grad() between backward() and step() in the script")


PER_BATCH_SCHEDULE = """
import torch
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
for epoch in range(6):
    for x, y in loader:
        loss = crit(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
    print(epoch)
"""


def test_a_per_epoch_scheduler_stepped_every_batch_moves_out_of_the_batch_loop(tmp_path):
    sites = _sites(tmp_path, PER_BATCH_SCHEDULE, schedulers=[("StepLR", "StepLR")])
    diff, why = patch.make({"kind": "scheduler_per_epoch"}, sites, tmp_path)
    assert diff is not None, why
    assert _applied(tmp_path, diff).endswith("        optimizer.step()\n    scheduler.step()\n    print(epoch)\n"), diff


CLIPS_SCALED = """
import torch
for x, y in loader:
    opt.zero_grad()
    scaler.scale(crit(model(x), y)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
"""


def test_a_clip_of_scaled_gradients_gets_unscale_just_before_it(tmp_path):
    sites = _sites(tmp_path, CLIPS_SCALED, optimizers=[], backward=[("backward()", 3)], step=["scaler.step(opt)"])
    diff, why = patch.make({"kind": "unscale_before_clip", "function": "clip_grad_norm_"}, sites, tmp_path)
    assert diff is not None, why
    assert _applied(tmp_path, diff).endswith(
        "    scaler.scale(crit(model(x), y)).backward()\n    scaler.unscale_(opt)\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n    scaler.step(opt)\n    scaler.update()\n"), diff
    (tmp_path / "train.py").write_text(textwrap.dedent(CLIPS_SCALED).replace("    torch.nn", "    scaler.unscale_(opt)\n    torch.nn"))
    sites = _sites(tmp_path, (tmp_path / "train.py").read_text(), optimizers=[], backward=[("backward()", 3)],
                   step=["scaler.step(opt)"])
    assert patch.make({"kind": "unscale_before_clip", "function": "clip_grad_norm_"}, sites, tmp_path)[0] is None
