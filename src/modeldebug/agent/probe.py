"""The agent's probe: a short training run on a copy of the user's model, never on their objects.

:func:`clone_for_probe` copies the model and its optimizer (state included); :func:`run_probe`
trains the copy under :func:`~modeldebug.collect.session.watch` and evaluates what it collected.
"""

from __future__ import annotations

import copy
import itertools
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

from modeldebug.errors import DebuggingError
from modeldebug.tools.base import call_model

if TYPE_CHECKING:
    from modeldebug.agent.models import DebuggingRequest
    from modeldebug.config import DebuggingConfig
    from modeldebug.types import Report


class Probed(NamedTuple):
    report: Report
    error: tuple[BaseException, int] | None  # what the user's model raised, at which probe step
    first_batch: tuple[Any, Any] | None  # (inputs, target)


def run_probe(model_c, opt_c, req: DebuggingRequest, config: DebuggingConfig, notices: list[str]) -> Probed:
    """Train the copy for ``probe_steps`` under :func:`watch` (every step sampled, an in-memory store)
    and evaluate what was collected; an exception from the user's model ends the probe (``error``)."""
    from modeldebug.collect.session import watch
    from modeldebug.pipeline import evaluate
    from modeldebug.store import RunStore

    config = config.model_copy(update={"store_path": None, "every": config.every or 1})
    store = RunStore(None)
    device = _device(model_c)
    batches = _batches(req.data)
    dbg = watch(model_c, opt_c, config=config, store=store)
    error: tuple[BaseException, int] | None = None
    first_batch = None
    trained = False
    step = 0
    try:
        with dbg:
            bad_after = None
            for step in range(req.analysis_config.probe_steps):
                try:
                    batch = next(batches)
                except StopIteration:
                    notices.append(f"The data ran out after {step} batches; the probe stopped there.")
                    break
                inputs, target = _split(_to(batch, device), model_takes_target=req.loss_fn is None)
                if first_batch is None:
                    first_batch = (inputs, target)
                if opt_c is not None:
                    opt_c.zero_grad(set_to_none=True)
                out = call_model(model_c, inputs, spread=(tuple,))
                loss = _loss(req.loss_fn, out, target)
                if loss is None:
                    notices.append("No loss: give `loss_fn` (or a model that returns its loss) to check "
                                   "training dynamics; only the forward pass was analysed.")
                    break
                loss.backward()
                if opt_c is not None:
                    opt_c.step()
                else:
                    dbg.step(loss)
                trained = True
                if bad_after is None and not bool(torch_isfinite(loss)):
                    bad_after = step
                if bad_after is not None and step - bad_after >= 3:
                    notices.append(f"The loss became non-finite at probe step {bad_after}; the probe stopped "
                                   "3 steps later.")
                    break
    except Exception as exc:  # the user's model or loss raised: that is the diagnosis
        error = (exc, step)
    try:
        ev = dbg.evidence()
        report = evaluate(ev)
    except Exception as exc:
        raise DebuggingError(f"The probe's run could not be analysed: {type(exc).__name__}: {exc}", "monitoring") from exc
    finally:
        store.close()
    _note_monitor_stop(ev, notices)
    if error is None and not trained and not notices:
        notices.append("The probe ran no training step.")
    return Probed(report, error, first_batch)


def _note_monitor_stop(ev, notices: list[str]) -> None:
    """The collector switched itself off after an internal error: say what the findings cover."""
    from modeldebug.events import MonitorError

    for e in ev.events_of(MonitorError):
        notices.append(f"The monitor stopped at probe step {e.at_step} after an internal error in "
                       f"{e.hook} ({e.type}: {e.message}); the findings cover the steps before it.")


def clone_for_probe(model, optimizer=None):
    """A deep copy of ``model`` and an equivalent optimizer over the copy's parameters (state included).
    A framework's wrapper (accelerate's AcceleratedOptimizer) is copied as the torch optimizer inside it."""
    import torch

    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    try:
        if optimizer is None:
            return copy.deepcopy(model), None
        groups = [list(g["params"]) for g in optimizer.param_groups]
        model_c, groups_c = copy.deepcopy((model, groups))
    except Exception as exc:
        raise DebuggingError(f"Could not copy the model for the probe ({type(exc).__name__}: {exc}); "
                             "analyse a stored run instead (run='latest').", "monitoring") from exc
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    new_groups = [{"params": ps, **copy.deepcopy(h)} for ps, h in zip(groups_c, hyper)]
    cls = type(optimizer)
    try:
        try:
            opt_c = cls(new_groups)
        except TypeError:
            opt_c = cls(new_groups, **copy.deepcopy(optimizer.defaults))
        opt_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    except Exception as exc:
        raise DebuggingError(f"Could not rebuild {cls.__name__} over the model's copy ({type(exc).__name__}: {exc})",
                             "monitoring") from exc
    return model_c, opt_c


def _batches(data: Any) -> Iterator[Any]:
    """One batch repeated, or the batches of an iterable, cycled (a one-shot iterator is read once)."""
    import torch

    single = isinstance(data, (torch.Tensor, dict)) or (
        isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor))
    if single:
        return itertools.repeat(data)

    def cycle():
        while True:
            n = 0
            for b in data:
                n += 1
                yield b
            if n == 0:
                raise ValueError("Expected `data` to yield batches but it yielded none")
            if iter(data) is data:  # an iterator: cannot start again
                return

    return cycle()


def _split(batch: Any, model_takes_target: bool = False) -> tuple[Any, Any]:
    """(inputs, target); without a loss_fn the whole batch goes to the model, which returns its loss."""
    import torch

    if isinstance(batch, torch.Tensor) or isinstance(batch, dict):
        return batch, None
    if isinstance(batch, (tuple, list)) and model_takes_target:
        return tuple(batch) if len(batch) > 1 else batch[0], None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        return tuple(batch[:-1]), batch[-1]
    return batch, None


def _loss(loss_fn, out: Any, target: Any):
    import torch

    if loss_fn is not None:
        return loss_fn(out, target) if target is not None else loss_fn(out)
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return out
    if isinstance(out, dict) and isinstance(out.get("loss"), torch.Tensor):
        return out["loss"]
    if isinstance(getattr(out, "loss", None), torch.Tensor):
        return out.loss
    return None


def loss_callable(loss_fn):
    """The loss the tools use: the given one, or the model's own when it returns a loss."""
    if loss_fn is not None:
        return loss_fn

    def own(out, target=None):
        loss = _loss(None, out, target)
        if loss is None:
            raise ValueError("no loss")
        return loss

    return own


def torch_isfinite(loss) -> bool:
    import torch

    return bool(torch.isfinite(loss.detach()).all())


def _to(batch: Any, device) -> Any:
    import torch

    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch) if isinstance(batch, tuple) else [_to(v, device) for v in batch]
    return batch


def _device(model):
    p = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if p is None else p.device
