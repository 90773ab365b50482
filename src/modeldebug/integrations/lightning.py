"""Lightning: ``Trainer(callbacks=[ModelDebugCallback()])`` watches the LightningModule and its
optimizers and writes the diagnosis when training ends.

    from modeldebug.integrations.lightning import ModelDebugCallback          # lightning.pytorch
    from modeldebug.integrations.pytorch_lightning import ModelDebugCallback  # pytorch_lightning

Steps are Lightning's own: a step closes at the end of the batch in which the optimizer stepped
(``trainer.global_step`` moved), so gradient accumulation over K batches is one step, and the
step's loss is what ``training_step`` returned, in its units (Lightning divides it by K before its
backward; a GradScaler scales that). Validation losses are those of the torch loss functions
``validation_step`` calls, else the loss it returns, else the one it logs (``val_loss``,
``val/loss`` ...). Options are :func:`modeldebug.watch`'s (``config``, ``store``, ``rules``,
``on_finding``, ``stop_on``, ``alerts``, the project's configuration) and the report's (``json``,
``html``, ``issue``, ``log_findings``). When training ends (also by an exception) the run is
closed, the report is saved in the run store and written to ``json`` / ``html``, its findings and
summary numbers go to the trainer's loggers (``log_metrics``; text on TensorBoard, MLflow and
W&B), and ``report`` holds it.

Under ``modeldebug run`` the callback adds Lightning's steps and losses to the run that command
watches (one run, not two) and logs the findings so far; that command writes the final report.
Nothing of the callback raises into training: an internal error switches it off with a warning.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from modeldebug.integrations import never_raises, stop_softly

if TYPE_CHECKING:
    from modeldebug.collect.session import Debugger
    from modeldebug.config import DebuggingConfig
    from modeldebug.types import Report

log = logging.getLogger(__name__)

# Names under which validation_step logs its loss (compared in lower case, separators as "_").
VALIDATION_LOSS_NAMES = ("val_loss", "valid_loss", "validation_loss", "val_loss_epoch", "loss_val")


def _warn_and_switch_off(callback, hook: str, exc: Exception) -> None:
    warnings.warn(f"modeldebug stopped watching this Lightning run after an internal error in "
                  f"{hook}: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
    log.debug("modeldebug Lightning callback failed", exc_info=True)
    callback._switch_off(hook, exc)


_safe = never_raises(_warn_and_switch_off)  # a hook of ours never raises into the Trainer


class Watching:
    """What the callback does; Lightning calls its hooks by name (see ``callback_class``)."""

    def __init__(self, config: "DebuggingConfig | None" = None, *, store: Any = None, rules: Any = (),
                 on_finding: Any = None, stop_on: Any = None, alerts: Any = None, json: str | None = None,
                 html: str | None = None, issue: str | None = None, log_findings: bool = True):
        from modeldebug.project_config import resolve

        resolve({})  # a bad project configuration is an error here, before training (as md.watch says)
        self.watch_options = dict(config=config, store=store, rules=rules, on_finding=on_finding, stop_on=stop_on,
                                  alerts=alerts)
        self.json, self.html, self.issue = json, html, issue
        self.log_findings = log_findings
        self.report: "Report | None" = None
        self.debugger: "Debugger | None" = None
        self._own = False  # our Debugger (else the one of `modeldebug run`)
        self._off = False
        self._losses: list[Any] = []  # training_step's losses since the last step closed
        self._global_step = 0
        self._validation_seen = self._epoch_seen = 0  # validation batches recorded when a batch / an epoch began
        self._stopped_by: Any = None  # the finding stop_on stopped the Trainer for

    def __getstate__(self) -> dict[str, Any]:
        # Pickled or copied with the Trainer (ddp_spawn, a deepcopy): the copy watches nothing.
        return {**self.__dict__, "debugger": None, "_losses": [], "_stopped_by": None}

    # ------------------------------------------------------------------ start

    @_safe
    def on_fit_start(self, trainer, pl_module) -> None:
        from modeldebug.collect import autopatch

        active = getattr(autopatch, "_active", None)
        if active is not None and not active._stopped:  # under `modeldebug run`: its run, watched once
            dbg, self._own = active, False
            discovery = getattr(dbg, "discovery", None)
            if discovery is not None:
                discovery.remove()  # the models are known: no global module hooks to find them
        else:  # md.watch's own settings: the project's configuration, rules, findings while it trains
            from modeldebug.collect.session import watch

            dbg, self._own = watch(pl_module, trainer.optimizers, **self.watch_options), True
            dbg.command = list(sys.argv)
        self.bind(dbg, trainer, pl_module)
        if self._own:
            stop_softly(dbg, functools.partial(self._stop_trainer, weakref.ref(trainer)))  # as EarlyStopping does
            dbg.start()

    def _stop_trainer(self, trainer_ref, finding) -> None:
        trainer = trainer_ref()
        if trainer is not None:
            trainer.should_stop = True  # (the step under way completes; fit returns after it)
            self._stopped_by = finding
            log.warning("modeldebug stops the training: %s %s", finding.kind, finding.message)

    def bind(self, dbg: "Debugger", trainer, pl_module) -> None:
        """Give ``dbg`` Lightning's steps and losses from now on (also mid-run: ``adopt_trainer``)."""
        dbg.attach(pl_module)
        for optimizer in trainer.optimizers:
            dbg.attach_optimizer(optimizer)
        dbg.steps.manual = True  # steps close in on_train_batch_end, not at the optimizer's step
        self.debugger, self.report, self._losses = dbg, None, []
        self._global_step = trainer.global_step

    def _switch_off(self, hook: str, exc: Exception) -> None:
        """After an error of ours: steps are the optimizer's again, and our own run is closed."""
        dbg, self.debugger = self.debugger, None
        try:
            if dbg is not None:
                dbg.steps.manual = False
                if self._own:
                    dbg._internal_error(hook, exc)  # (a monitor_error event: the report says why it ends here)
                    dbg.stop()
        except Exception:  # noqa: BLE001
            log.debug("modeldebug could not close its Lightning run", exc_info=True)

    # ------------------------------------------------------------------ training steps

    @_safe
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dbg = self.debugger
        if dbg is None:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            if pl_module.automatic_optimization:
                loss = loss * trainer.accumulate_grad_batches  # (Lightning returns it divided by K)
            self._losses.append(loss.detach().float().reshape(()))
        if trainer.global_step == self._global_step:
            return  # accumulating gradients: the step goes on over the next batch
        self._global_step = trainer.global_step
        losses, self._losses = self._losses, []
        if len(losses) > 1:
            import torch

            losses = [torch.stack(losses).mean()]
        dbg.step(losses[0] if losses else None)

    # ------------------------------------------------------------------ validation

    def _validation_batches(self) -> int:
        return self.debugger.hooks.validation.batches if self.debugger is not None else 0

    @_safe
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_seen = self._validation_batches()

    @_safe
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._validation_seen = self._validation_batches()

    @_safe
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        loss = _loss_of(outputs)
        if self._recording(trainer) and loss is not None and self._validation_batches() == self._validation_seen:
            self._add_validation(loss)  # a hand-written loss: no torch loss function saw it

    @_safe
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._recording(trainer) or self._validation_batches() != self._epoch_seen:
            return
        logged = _logged_validation_loss(trainer.callback_metrics)
        if logged is not None:
            self._add_validation(logged)  # only logged (self.log("val_loss", ...)): the epoch's value

    def _recording(self, trainer) -> bool:
        return self.debugger is not None and not trainer.sanity_checking

    def _add_validation(self, loss) -> None:
        import torch

        value = loss if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        if value.numel() == 1 and value.is_floating_point():
            self.debugger.hooks.validation.add("validation_step", None, None, value.detach())

    # ------------------------------------------------------------------ the end

    @_safe
    def on_train_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    @_safe
    def on_exception(self, trainer, pl_module, exception) -> None:
        self._finish(trainer, exception)

    def _finish(self, trainer, error: BaseException | None = None) -> None:
        dbg, self.debugger = self.debugger, None
        if dbg is None:
            return
        from modeldebug.pipeline import diagnose

        settings = dict(issue=self.issue, json_out=self.json, html_out=self.html, **dbg.diagnose_with)
        if error is None and self._stopped_by is not None:
            from modeldebug.live_diagnosis import StopTraining

            error = StopTraining(self._stopped_by)  # fit returned because stop_on stopped it: status "stopped"
        if self._own:
            dbg.__exit__(type(error) if error is not None else None, error, None)  # its status, as md.watch's
            diagnosis = diagnose(dbg.store, dbg.run_id, **settings)
        else:  # `modeldebug run` closes the run and writes its report: this is the run so far
            dbg.steps.manual = False
            dbg.store.update_run(dbg.run_id, steps=dbg.step_count)
            diagnosis = diagnose(dbg.store, dbg.run_id, evidence=dbg.evidence(), save=False, **settings)
        self.report = diagnosis.report
        if self.log_findings and trainer.is_global_zero:
            log_report(trainer.loggers, self.report, trainer.global_step)
        for path in diagnosis.written:
            log.info("modeldebug report written to %s", path)


def adopt_trainer(debugger: "Debugger") -> bool:
    """Called by ``modeldebug run``'s debugger when it finds its models: a LightningModule being fit
    gets the callback (Lightning's steps and losses, its loggers), unless the user's is there. True
    when a Trainer was adopted."""
    for model in debugger.watched.models:
        trainer = getattr(model.module, "_trainer", None)
        callbacks = getattr(trainer, "callbacks", None)
        if not isinstance(callbacks, list) or getattr(trainer, "optimizers", None) is None:
            continue
        if not any(isinstance(cb, Watching) for cb in callbacks):
            package = ("pytorch_lightning",) if type(trainer).__module__.startswith("pytorch_lightning") else (
                "lightning.pytorch", "pytorch_lightning")
            cb = callback_class(_import_base(*package))()
            cb.bind(debugger, trainer, model.module)
            callbacks.append(cb)  # (its state_dict is empty: nothing of ours goes into checkpoints)
        return True
    return False


def _loss_of(outputs) -> Any:
    """The loss in what a step returned: a tensor, or a mapping's "loss"."""
    import torch

    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1 and outputs.is_floating_point():
        return outputs
    return None


def _logged_validation_loss(metrics: dict[str, Any]) -> Any:
    for name, value in metrics.items():
        key = str(name).lower().replace("/", "_").replace("-", "_").replace(".", "_")
        if key in VALIDATION_LOSS_NAMES:
            return value
    return None


def log_report(loggers, report: "Report", step: int) -> None:
    """The report's summary numbers and findings to each of the trainer's loggers; a logger that
    refuses them is skipped (our report is written whatever the loggers do)."""
    from modeldebug.export.content import build

    content = build(report)
    metrics = {k: v for k, v in content.final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    for logger in loggers:
        try:
            logger.log_metrics(metrics, step=step)
            _log_text(logger, content.findings_text or "No problems found.", step)
        except Exception:  # noqa: BLE001
            log.warning("modeldebug could not log its findings to %s", type(logger).__name__, exc_info=True)


def _log_text(logger, text: str, step: int) -> None:
    """Text where the logger takes it: TensorBoard's add_text, W&B's log_text, MLflow's log_text."""
    kind = type(logger).__name__
    if kind == "TensorBoardLogger":
        logger.experiment.add_text("modeldebug/findings", text, global_step=step)
    elif kind == "WandbLogger":
        logger.log_text(key="modeldebug/findings", columns=["findings"], data=[[text]], step=step)
    elif kind == "MLFlowLogger":
        logger.experiment.log_text(logger.run_id, text, "modeldebug/findings.md")


@functools.lru_cache(maxsize=None)
def callback_class(base: type) -> type:
    """ModelDebugCallback on ``base`` (lightning.pytorch's or pytorch_lightning's Callback)."""

    class ModelDebugCallback(Watching, base):
        """``Trainer(callbacks=[ModelDebugCallback(json="report.json")])``: watches the run and writes
        the diagnosis when training ends (see :mod:`modeldebug.integrations.lightning`). Options are
        those of :func:`modeldebug.watch` and the report's; ``report`` holds the report afterwards."""

    # Importable by name (pickle, ddp_spawn): each package's class lives in its module's namespace.
    package = "pytorch_lightning" if base.__module__.startswith("pytorch_lightning") else "lightning"
    ModelDebugCallback.__module__ = f"modeldebug.integrations.{package}"
    ModelDebugCallback.__qualname__ = "ModelDebugCallback"
    return ModelDebugCallback


def _import_base(*packages: str) -> type:
    from modeldebug.errors import MissingExtraError

    for package in packages:
        try:
            return __import__(package, fromlist=["Callback"]).Callback
        except ImportError:
            continue
    raise MissingExtraError(packages[0].split(".")[0], "lightning")


def __getattr__(name: str):
    if name == "ModelDebugCallback":  # lightning imported on first use
        cls = globals()[name] = callback_class(_import_base("lightning.pytorch", "pytorch_lightning"))
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
