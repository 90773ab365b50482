"""ModelDebugCallback with the real Lightning Trainer (CPU, tiny models, synthetic data): steps and
losses are Lightning's own (optimizer.step(closure), gradient accumulation), planted faults are
found, a healthy run stays quiet, the report goes to the trainer's loggers, and nothing of ours
raises into training."""

from __future__ import annotations

import copy
import csv
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

import modeldebug as md  # noqa: E402
from modeldebug.integrations.lightning import ModelDebugCallback  # noqa: E402
from modeldebug.store import RunStore  # noqa: E402

SERIOUS = ("medium", "high")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


def _data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def _loader(n=512, seed=0, batch_size=32, shuffle=True):
    return DataLoader(TensorDataset(*_data(n, seed)), batch_size=batch_size, shuffle=shuffle)


class Classifier(L.LightningModule):
    def __init__(self, lr=0.05, optimizer="sgd", hand_written_loss=False):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        self.lr, self.optimizer_name, self.hand_written_loss = lr, optimizer, hand_written_loss

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        if self.hand_written_loss:
            p = logits.softmax(1)
            loss = -torch.log(p.gather(1, y[:, None])).mean()
        else:
            loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        p = self(x).softmax(1)
        self.log("val_loss", -torch.log(p.gather(1, y[:, None]) + 1e-8).mean())  # hand-written: logged only

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Recorder(L.Callback):
    """Lightning's own view of each batch: the loss training_step returned and the gradient norm
    before the optimizer's update (on_before_optimizer_step runs after the closure's backward)."""

    def __init__(self):
        self.losses, self.norms = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]) * trainer.accumulate_grad_batches)
        if batch_idx == 1:  # the Trainer's callbacks pickle (ddp_spawn does) and copy while watched
            for cb in trainer.callbacks:
                assert pickle.loads(pickle.dumps(cb)) is not None and copy.deepcopy(cb) is not None


def _fit(module, tmp_path, max_steps=60, val=False, callbacks=(), logger=False, html=None, **trainer_kwargs):
    cb = ModelDebugCallback(md.DebuggingConfig(store_path=str(tmp_path / "runs.db")), json=str(tmp_path / "r.json"),
                            html=html)
    trainer = L.Trainer(max_steps=max_steps, enable_checkpointing=False, logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb, *callbacks], num_sanity_val_steps=0,
                        accelerator="cpu", devices=1, **trainer_kwargs)
    trainer.fit(module, _loader(), _loader(256, seed=1, shuffle=False) if val else None)
    return cb, trainer


def _serious(report):
    return [f for f in report.findings if f.severity in SERIOUS]


def _evidence(cb, tmp_path):
    return RunStore(str(tmp_path / "runs.db")).load_evidence(cb.report.run.id)


def test_a_healthy_run_is_quiet_and_its_steps_are_lightnings(tmp_path):
    torch.manual_seed(0)
    rec = Recorder()
    cb, _ = _fit(Classifier(), tmp_path, max_steps=80, val=True, callbacks=[rec], val_check_interval=40,
                check_val_every_n_epoch=None)
    assert cb.report is not None and (tmp_path / "r.json").exists()
    assert _serious(cb.report) == [], [(f.kind, f.severity, f.message) for f in cb.report.findings]
    ev = _evidence(cb, tmp_path)
    assert len(ev.steps) == 80 and ev.steps.optimizer_stepped.all()
    np.testing.assert_allclose(ev.steps.loss, rec.losses, rtol=1e-5)
    # closure alignment: each step's gradient norm is the one its own backward made (not the previous step's)
    np.testing.assert_allclose(ev.steps.grad_norm, rec.norms, rtol=1e-4)
    assert np.nanmedian(ev.steps.optimizer_s) < np.nanmedian(ev.steps.forward_s + ev.steps.backward_s)
    # the logged hand-written validation loss, once per validation run
    assert len(ev.validation) == 2 and np.isfinite(ev.validation.loss).all()


def test_gradient_accumulation_is_one_step_with_the_returned_loss(tmp_path):
    torch.manual_seed(0)
    rec = Recorder()
    cb, trainer = _fit(Classifier(), tmp_path, max_steps=12, callbacks=[rec], accumulate_grad_batches=4)
    ev = _evidence(cb, tmp_path)
    assert trainer.global_step == 12 and len(ev.steps) == 12
    assert (ev.steps.backward_calls == 4).all()
    expected = np.asarray(rec.losses[: 12 * 4]).reshape(12, 4).mean(1)  # in training_step's units, not / 4
    np.testing.assert_allclose(ev.steps.loss, expected, rtol=1e-5)
    np.testing.assert_allclose(ev.steps.grad_norm, rec.norms, rtol=1e-4)


def test_a_learning_rate_far_too_high_is_found(tmp_path):
    torch.manual_seed(0)
    cb, _ = _fit(Classifier(lr=5.0, optimizer="adam"), tmp_path, max_steps=80)
    causes = [c for f in _serious(cb.report) for c in f.causes]
    assert "learning_rate_too_high" in causes, [(f.kind, f.severity, f.causes) for f in cb.report.findings]


def test_a_frozen_layer_is_found(tmp_path):
    torch.manual_seed(0)
    module = Classifier()
    module.backbone[0].requires_grad_(False)  # frozen, yet handed to the optimizer
    cb, _ = _fit(module, tmp_path, max_steps=40)
    found = [f for f in _serious(cb.report) if f.kind == "unchanged_weights"]
    assert found and "frozen_parameters" in found[0].causes
    assert "backbone.0" in str(found[0].location) + str(found[0].evidence)


class ConfidentClassifier(Classifier):
    """training_step calls self.backbone (never forward) and a hand-written BCE that reaches log(0)."""

    def __init__(self):
        super().__init__(lr=0.01, optimizer="adam")
        self.backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = self.backbone(x * 40)  # a strongly separating input: the sigmoid rounds to exactly 0 or 1
        t = y.float()[:, None]
        loss = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
        return loss


def test_a_nan_from_a_hand_written_loss_is_blamed_on_the_loss(tmp_path):
    torch.manual_seed(0)
    cb, _ = _fit(ConfidentClassifier(), tmp_path, max_steps=120)
    ev = _evidence(cb, tmp_path)
    origins = [e["data"] for e in ev.events if e["type"] == "nonfinite_origin"]
    assert origins and origins[0]["phase"] == "loss", origins
    nan = [f for f in cb.report.findings if f.kind == "nan_or_inf"]
    assert nan and nan[0].severity == "high" and nan[0].causes[0] == "numerically_unstable_op"
    assert not str(nan[0].location or "").startswith("backbone")


def test_findings_and_summary_reach_the_trainers_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    module = Classifier()
    module.backbone[0].requires_grad_(False)
    logger = CSVLogger(str(tmp_path / "logs"), name="exp")
    cb, _ = _fit(module, tmp_path, max_steps=30, logger=logger, html=str(tmp_path / "r.html"))
    assert "unchanged_weights" in (tmp_path / "r.html").read_text()
    assert md.Report.from_json((tmp_path / "r.json").read_text()).findings == cb.report.findings
    with open(os.path.join(logger.log_dir, "metrics.csv")) as fh:
        rows = list(csv.DictReader(fh))
    total = [float(r["modeldebug/findings/total"]) for r in rows if r.get("modeldebug/findings/total")]
    assert total == [float(len(cb.report.findings))] and total[0] >= 1
    assert any(r.get("modeldebug/run/steps") == "30.0" for r in rows)


def test_an_internal_error_switches_the_callback_off_and_training_goes_on(tmp_path, monkeypatch):
    def broken(outputs):
        raise RuntimeError("ours")

    monkeypatch.setattr("modeldebug.integrations.lightning._loss_of", broken)
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="stopped watching"):
        cb, trainer = _fit(Classifier(), tmp_path, max_steps=5)
    assert trainer.global_step == 5 and cb.report is None
    run = RunStore(str(tmp_path / "runs.db")).list_runs()[0]
    assert run.status == "completed"  # closed when it switched off (no hooks left behind)
    ev = RunStore(str(tmp_path / "runs.db")).load_evidence(run.id)
    assert [e["data"]["hook"] for e in ev.events if e["type"] == "monitor_error"] == ["on_train_batch_end"]
    from modeldebug.collect import patches
    assert not patches._listeners


def test_the_pytorch_lightning_package_gets_its_own_callback(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from modeldebug.integrations.pytorch_lightning import ModelDebugCallback as PLCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cb = PLCallback(md.DebuggingConfig(store_path=str(tmp_path / "runs.db")))
    assert isinstance(cb, pl.Callback) and type(pickle.loads(pickle.dumps(cb))) is PLCallback
    trainer = pl.Trainer(max_steps=6, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[cb], accelerator="cpu")
    trainer.fit(Module(), _loader())
    assert cb.report is not None and cb.report.run.steps == 6


SCRIPT = """
import torch, lightning as L
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from modeldebug.integrations.lightning import ModelDebugCallback

torch.manual_seed(0)
x = torch.randn(256, 8); y = (x[:, 0] > 0).long()

class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    def training_step(self, batch, i):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

cb = ModelDebugCallback()
L.Trainer(max_steps=16, accumulate_grad_batches=2, enable_checkpointing=False, logger=False,
          enable_progress_bar=False, enable_model_summary=False, callbacks=[cb]).fit(
    M(), DataLoader(TensorDataset(x, y), batch_size=16))
print("CALLBACK_STEPS", cb.report.run.steps)
"""


def test_under_modeldebug_run_the_callback_adds_to_that_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    store = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, "-m", "modeldebug", "run", "--store", str(store), "--json",
                          str(tmp_path / "run.json"), "--", sys.executable, str(script)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CALLBACK_STEPS 16" in out.stdout
    runs = RunStore(str(store)).list_runs()
    assert len(runs) == 1  # one run, not one per watcher
    ev = RunStore(str(store)).load_evidence(runs[0].id)
    assert len(ev.steps) == 16 and (ev.steps.backward_calls == 2).all()


def test_zero_code_discovery_adopts_the_trainer(tmp_path):
    """What `modeldebug run` does in the script's process: its AutoDebugger finds the LightningModule
    at the first step and gives the Trainer the callback, so accumulated batches are one step with
    training_step's own loss, and validation is recorded."""
    from modeldebug.collect.auto import AutoDebugger

    torch.manual_seed(0)
    rec = Recorder()
    dbg = AutoDebugger(md.DebuggingConfig(store_path=str(tmp_path / "runs.db"))).start()
    try:
        trainer = L.Trainer(max_steps=10, accumulate_grad_batches=2, enable_checkpointing=False, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[rec],
                            num_sanity_val_steps=0, accelerator="cpu", devices=1)
        trainer.fit(Classifier(), _loader(), _loader(128, seed=1, shuffle=False))
    finally:
        dbg.stop()
    adopted = [cb for cb in trainer.callbacks if isinstance(cb, ModelDebugCallback)]
    assert len(adopted) == 1 and adopted[0].report is not None
    ev = dbg.evidence()
    assert len(ev.steps) == 10 and (ev.steps.backward_calls == 2).all()
    np.testing.assert_allclose(ev.steps.loss, np.asarray(rec.losses[:20]).reshape(10, 2).mean(1), rtol=1e-5)
    assert len(ev.validation) == 1  # the logged hand-written validation loss


def test_findings_reach_tensorboard_as_text_and_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    module = Classifier()
    module.backbone[0].requires_grad_(False)
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="exp")
    cb, _ = _fit(module, tmp_path, max_steps=30, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert acc.Scalars("modeldebug/findings/total")[-1].value == len(cb.report.findings)
    text = acc.Tensors("modeldebug/findings/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "unchanged_weights" in text and "backbone.0" in text


class TwoOptimizers(L.LightningModule):
    """Manual optimization (a GAN-style loop): two optimizers stepped by hand in every batch."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.encoder, self.head = nn.Linear(8, 16), nn.Linear(16, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_a, opt_b = self.optimizers()
        for opt in (opt_a, opt_b):
            loss = F.cross_entropy(self.head(torch.relu(self.encoder(x))), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss

    def configure_optimizers(self):
        return (torch.optim.SGD(self.encoder.parameters(), lr=0.05),
                torch.optim.SGD(self.head.parameters(), lr=0.05))


def test_manual_optimization_is_one_step_per_batch(tmp_path):
    torch.manual_seed(0)
    cb, trainer = _fit(TwoOptimizers(), tmp_path, max_steps=20)  # global_step counts both optimizers
    ev = _evidence(cb, tmp_path)
    assert len(ev.steps) == 10 and (ev.steps.backward_calls == 2).all() and np.isfinite(ev.steps.loss).all()
    assert _serious(cb.report) == [], [(f.kind, f.severity) for f in cb.report.findings]


def test_findings_reach_mlflow_as_an_artifact_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store, as a user opts in
    uri = f"file:{tmp_path / 'mlruns'}"
    torch.manual_seed(0)
    module = Classifier()
    module.backbone[0].requires_grad_(False)
    logger = MLFlowLogger(experiment_name="exp", tracking_uri=uri)
    cb, _ = _fit(module, tmp_path, max_steps=30, logger=logger)
    client = MlflowClient(tracking_uri=uri)
    total = client.get_metric_history(logger.run_id, "modeldebug/findings/total")
    assert [m.value for m in total] == [len(cb.report.findings)]
    text = open(client.download_artifacts(logger.run_id, "modeldebug/findings.md", str(tmp_path / "dl"))).read()
    assert "unchanged_weights" in text


def test_gradient_norms_are_taken_before_lightnings_clipping(tmp_path):
    torch.manual_seed(0)
    rec = Recorder()
    cb, _ = _fit(Classifier(lr=0.5), tmp_path, max_steps=12, callbacks=[rec], gradient_clip_val=0.05)
    ev = _evidence(cb, tmp_path)
    assert max(rec.norms) > 0.05  # the clipping changes them
    np.testing.assert_allclose(ev.steps.grad_norm, rec.norms, rtol=1e-4)


def test_the_callback_takes_md_watch_options_such_as_your_own_rules(tmp_path):
    from dataclasses import dataclass

    from modeldebug.rules import Rule
    from modeldebug.rules.base import col

    @dataclass
    class StepCount(Rule):
        id = "step_count"
        kind = "custom.step_count"
        reads = ("steps.loss",)

        def check(self, ev):
            return [self.finding(severity="low", confidence=1.0, message=f"{len(col(ev.steps, 'loss'))} steps",
                                 evidence={})]

    cb = ModelDebugCallback(md.DebuggingConfig(store_path=str(tmp_path / "runs.db")), rules=[StepCount])
    trainer = L.Trainer(max_steps=7, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], accelerator="cpu")
    trainer.fit(Classifier(), _loader())
    assert [f.message for f in cb.report.findings if f.kind == "custom.step_count"] == ["7 steps"]


class _Slow(Classifier):
    """A step of about 5 ms, so that a live diagnosis pass comes while it trains."""

    def training_step(self, batch, batch_idx):
        import time

        time.sleep(0.005)
        return super().training_step(batch, batch_idx)


def test_stop_on_stops_the_trainer_as_early_stopping_does(tmp_path, ten_steps_rule):
    """`stop_on`: the Trainer stops (should_stop), fit returns, the report says stopped and by what."""
    cb = ModelDebugCallback(md.DebuggingConfig(store_path=str(tmp_path / "runs.db")), rules=[ten_steps_rule],
                            stop_on="high", json=str(tmp_path / "r.json"))
    trainer = L.Trainer(max_steps=3000, max_epochs=1000, enable_checkpointing=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb], accelerator="cpu")
    trainer.fit(_Slow(), _loader())  # returns: no StopTraining out of fit
    assert trainer.should_stop and 10 <= trainer.global_step < 3000
    assert cb.report.run.status == "stopped" and cb.report.run.steps == trainer.global_step
    assert "custom.ten_steps" in (cb.report.run.stopped_by or "")
