"""The Hugging Face Trainer with modeldebug: ``ModelDebugCallback`` and zero-code ``modeldebug run``.

Real transformers (a 2-layer GPT-2 built from its config, 64 tokens), synthetic sequences that can
be learned (arithmetic progressions mod 64), CPU, no hub. Checked: a healthy run is quiet and its
report reaches the Trainer's logs; a learning rate 1000x too high is found; the recorded training
and validation losses are the Trainer's own (with gradient accumulation and evaluation); gradient
norms are taken before the Trainer clips them; under ``modeldebug run`` the Trainer is adopted once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from modeldebug.integrations.transformers import ModelDebugCallback, summary  # noqa: E402
from modeldebug.store import RunStore  # noqa: E402

VOCAB, LENGTH = 64, 16

transformers.logging.set_verbosity_error()


class Progressions(torch.utils.data.Dataset):
    """Token sequences start, start+d, start+2d, ... (mod 64): the next token follows from the last two."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        stride = torch.randint(1, 4, (n, 1), generator=g)
        self.x = (start + stride * torch.arange(LENGTH)) % VOCAB

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def arguments(tmp_path, **kw) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, per_device_train_batch_size=16,
                    per_device_eval_batch_size=32, learning_rate=3e-3, warmup_steps=10, max_steps=60,
                    logging_steps=10, save_strategy="no", disable_tqdm=True, seed=0)
    settings.update(kw)
    return TrainingArguments(**settings)


def train(tmp_path, callback, trainer_class=Trainer, evaluate=False, **kw) -> Trainer:
    args = arguments(tmp_path, eval_strategy="steps" if evaluate else "no", eval_steps=20, **kw)
    trainer = trainer_class(model=tiny_model(), args=args, train_dataset=Progressions(2000, 0),
                            eval_dataset=Progressions(128, 1) if evaluate else None, callbacks=[callback])
    trainer.train()
    return trainer


def logged(trainer: Trainer, key: str) -> dict[int, float]:
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


def serious(report) -> list:
    return [f for f in report.findings if f.severity in ("high", "medium")]


def test_healthy_run_is_quiet_and_its_report_reaches_the_trainers_logs(tmp_path, store_path):
    cb = ModelDebugCallback(store=store_path)
    trainer = train(tmp_path, cb, evaluate=True)
    losses = list(logged(trainer, "loss").values())
    assert losses[-1] < 0.85 * losses[0]  # it learns
    assert serious(cb.report) == [], [(f.kind, f.message) for f in cb.report.findings]
    saved = json.loads((tmp_path / "out" / "modeldebug-report.json").read_text())
    assert saved["run"]["steps"] == 60
    final = [h for h in trainer.state.log_history if "modeldebug/findings" in h]
    assert len(final) == 1 and final[0]["modeldebug/findings"] == len(cb.report.findings)
    assert cb.debugger._stopped and cb.debugger.store.list_runs(5)[0].status == "completed"


def test_learning_rate_1000x_too_high_with_adamw_warmup_is_found(tmp_path, store_path):
    cb = ModelDebugCallback(store=store_path, json=False)
    trainer = train(tmp_path, cb, learning_rate=3.0)
    assert not (tmp_path / "out" / "modeldebug-report.json").exists()
    found = [f for f in serious(cb.report) if f.kind == "loss_not_decreasing"]
    assert found and found[0].causes[0] == "learning_rate_too_high", [(f.kind, f.message) for f in cb.report.findings]
    assert "lr is 3" in found[0].recommendations[0].description
    last = [h for h in trainer.state.log_history if "modeldebug/findings" in h][-1]
    assert last["modeldebug/loss_not_decreasing"] == 3  # high, in the Trainer's logs


def test_losses_are_the_trainers_own_with_accumulation_and_evaluation(tmp_path, store_path):
    cb = ModelDebugCallback(store=store_path, json=False)
    trainer = train(tmp_path, cb, evaluate=True, gradient_accumulation_steps=4, max_steps=24, logging_steps=1)
    ev = cb.debugger.store.load_evidence(cb.debugger.run_id)
    ours = np.asarray(ev.steps["loss"], dtype=float)
    theirs = logged(trainer, "loss")  # one optimizer step per log: each step's own loss
    assert len(ours) == 24 and list(ev.steps["backward_calls"]) == [4] * 24
    np.testing.assert_allclose(ours, [theirs[s + 1] for s in range(24)], rtol=1e-3)
    evals = logged(trainer, "eval_loss")
    assert list(ev.validation["step"]) == list(evals)
    np.testing.assert_allclose(ev.validation["loss"], list(evals.values()), rtol=1e-6)
    assert 2.0 < min(evals.values()) and max(evals.values()) < 5.0  # per token, not summed over a batch


class OwnNorms(Trainer):
    """Computes the gradient norm itself right before the Trainer clips it."""

    norms: list[float]

    def _clip_grad_norm(self, model):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return super()._clip_grad_norm(model)


def test_gradient_norms_are_taken_before_the_trainer_clips_them(tmp_path, store_path):
    OwnNorms.norms = []
    cb = ModelDebugCallback(store=store_path, json=False)
    trainer = train(tmp_path, cb, OwnNorms, max_steps=20, logging_steps=1, max_grad_norm=0.05,
                    gradient_accumulation_steps=2)
    ev = cb.debugger.store.load_evidence(cb.debugger.run_id)
    ours = np.asarray(ev.steps["grad_norm"], dtype=float)
    assert len(OwnNorms.norms) == 20 and min(OwnNorms.norms) > 0.2  # every step clipped hard
    np.testing.assert_allclose(ours, OwnNorms.norms, rtol=1e-4)
    np.testing.assert_allclose(ours, list(logged(trainer, "grad_norm").values()), rtol=1e-4)


def test_an_internal_failure_switches_the_callback_off_and_training_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cb = ModelDebugCallback(store=str(blocker / "runs.db"))  # a store under a file cannot be made
    trainer = train(tmp_path, cb, max_steps=5)
    assert trainer.state.global_step == 5 and cb._off and cb.report is None


def test_summary_counts_by_severity_and_kind():
    from modeldebug.types import Finding, Report, RunInfo

    report = Report(run=RunInfo(id="r", command=[], status="completed"), findings=[
        Finding(kind="dead_relu", severity="low", confidence=0.5, message="a"),
        Finding(kind="dead_relu", severity="high", confidence=0.5, message="b"),
        Finding(kind="overfitting", severity="medium", confidence=0.5, message="c")])
    out = summary(report, skipped_steps=2)
    assert out["modeldebug/findings"] == 3 and out["modeldebug/high"] == 1 and out["modeldebug/low"] == 1
    assert out["modeldebug/dead_relu"] == 3 and out["modeldebug/overfitting"] == 2
    assert out["modeldebug/skipped_steps"] == 2


ZERO_CODE = textwrap.dedent('''
    import json, sys, tempfile
    import torch
    sys.path.insert(0, sys.argv[2])
    from test_transformers import Progressions, tiny_model
    from transformers import Trainer, TrainingArguments
    from modeldebug.integrations.transformers import ModelDebugCallback
    from modeldebug.collect import autopatch

    model = tiny_model()

    def run(callbacks, **kw):
        args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, learning_rate=3e-3,
                                 per_device_train_batch_size=16, warmup_steps=2, logging_steps=1, save_strategy="no",
                                 disable_tqdm=True, **kw)
        trainer = Trainer(model=model, args=args, train_dataset=Progressions(512, 0), callbacks=callbacks)
        trainer.train()
        return trainer

    first = run([], max_steps=6, gradient_accumulation_steps=2)
    mine = ModelDebugCallback()
    second = run([mine], max_steps=4)  # a second phase: a new Trainer and optimizer, the same model
    adopted = [cb for cb in first.callback_handler.callbacks if isinstance(cb, ModelDebugCallback)]
    json.dump({
        "first_adopted": len(adopted), "first_at": first.callback_handler.callbacks.index(adopted[0]),
        "bound": adopted[0].debugger is autopatch._active and mine.debugger is autopatch._active and not mine._own,
        "losses": [h["loss"] for t in (first, second) for h in t.state.log_history if "loss" in h],
        "logged": [h for h in second.state.log_history if "modeldebug/findings" in h],
    }, open(sys.argv[1], "w"))
''')


def test_modeldebug_run_adopts_the_trainer_once(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(ZERO_CODE)
    facts = tmp_path / "facts.json"
    store = tmp_path / "runs.db"
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", str(store), "--", sys.executable,
                           str(script), str(facts), os.path.dirname(__file__)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(facts.read_text())
    assert got["first_adopted"] == 1 and got["first_at"] == 0 and got["bound"]
    assert len(got["logged"]) == 1  # the findings so far went into the second Trainer's logs
    runs = RunStore(store).list_runs(10)
    assert len(runs) == 1  # one debugger: the callback made no run of its own
    ev = RunStore(store).load_evidence(runs[0].id)
    np.testing.assert_allclose(ev.steps["loss"], got["losses"], rtol=1e-3)  # accumulation: not loss/2


def test_training_that_raises_is_closed_as_crashed_at_exit(tmp_path, store_path):
    from modeldebug.integrations.transformers import _close_unfinished

    class Breaks(Trainer):
        def training_step(self, *args, **kwargs):
            if self.state.global_step == 3:
                raise RuntimeError("a bug in the user's training step")
            return super().training_step(*args, **kwargs)

    cb = ModelDebugCallback(store=store_path)
    with pytest.raises(RuntimeError, match="a bug in the user's"):
        train(tmp_path, cb, Breaks, max_steps=10)
    assert not cb.debugger._stopped  # no on_train_end
    _close_unfinished(weakref.ref(cb.debugger))  # what atexit runs
    run = cb.debugger.store.list_runs(1)[0]
    assert run.status == "crashed" and run.steps == 3


def test_a_trainer_that_cannot_be_adopted_leaves_the_monitor_on(monkeypatch):
    from modeldebug.integrations import transformers as integration

    class Odd:
        callback_handler = None  # no callback list to join

    monkeypatch.setattr(integration, "trainer_on_stack", lambda: Odd())
    assert integration.adopt_trainer(object()) is False


def test_findings_reach_the_trainers_tensorboard_logs(tmp_path, store_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = ModelDebugCallback(store=store_path, json=False)
    train(tmp_path, cb, learning_rate=3.0, max_steps=40, report_to=["tensorboard"])
    runs = {p.parent for p in (tmp_path / "out").rglob("events.out.tfevents*")}
    scalars = {}
    for run in runs:
        acc = EventAccumulator(str(run))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = acc.Scalars(tag)[-1].value
    assert scalars["train/modeldebug/findings"] == len(cb.report.findings) >= 1
    assert scalars["train/modeldebug/loss_not_decreasing"] >= 2  # medium or high


def test_stop_on_ends_training_through_the_trainers_control(tmp_path, store_path, ten_steps_rule):
    """`stop_on`: control.should_training_stop ends train() normally; the report says stopped and by what."""
    import time

    import modeldebug as md

    class SlowTrainer(Trainer):  # a step of ~10 ms more, so that a live pass comes while it trains
        def training_step(self, *args, **kwargs):
            time.sleep(0.01)
            return super().training_step(*args, **kwargs)

    cb = ModelDebugCallback(md.DebuggingConfig(store_path=store_path), rules=[ten_steps_rule], stop_on="high")
    trainer = train(tmp_path, cb, trainer_class=SlowTrainer, max_steps=2000)
    assert 10 <= trainer.state.global_step < 2000
    assert cb.report.run.status == "stopped" and "custom.ten_steps" in (cb.report.run.stopped_by or "")
    assert json.loads((tmp_path / "out" / "modeldebug-report.json").read_text())["run"]["status"] == "stopped"
