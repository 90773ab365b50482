"""The zero-code Debugger of ``modeldebug run``: it finds the models and optimizers by itself and
records the exception that ends the script (started by ``collect/autopatch``)."""

from __future__ import annotations

import gc
import sys
import traceback
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_mod

from modeldebug.collect.compiled import compiled_in_place, compiling, drop_filter, hide_global_hooks_warning, wrapper_of
from modeldebug.collect.children import Children
from modeldebug.collect.session import Debugger
from modeldebug.collect.stats import first_float_tensor
from modeldebug.collect.steps import now
from modeldebug.events import Traceback

MAX_CANDIDATES = 64  # top-level modules kept until discovery


class Discovery:
    """Global module hooks, only until discovery: keep the top-level modules the script calls,
    then watch the roots that train (``discover``). Holds nothing once done."""

    def __init__(self, debugger: Debugger):
        self._dbg = debugger
        self._candidates: list[nn.Module] = []  # modules called at top level before discovery
        self._depth = 0
        self._handles: list[Any] = []
        self.pending = False  # installed, and the models not found yet
        self._warning_filter: Any = None
        self._judged: set[int] = set()  # ids of the optimizers already looked at
        self.last_grad: bool | None = None  # grad mode of the last top-level call
        self.unwatched_backward = 0
        # (module, args, kwargs, rng state) of the last top-level training call: the first step's
        # forward, which runs before the model is known (replayed if that step turns non-finite)
        self._last_call: tuple | None = None

    def install(self) -> None:
        self.pending = True
        self._warning_filter = hide_global_hooks_warning()
        self._handles = [
            module_mod.register_module_forward_pre_hook(self._pre),
            module_mod.register_module_forward_hook(self._post, always_call=True),
        ]

    def remove(self) -> None:
        self.pending = False
        self._release()

    def _release(self) -> None:
        """The global hooks go; discovery still comes at the first backward."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._warning_filter is not None:
            drop_filter(self._warning_filter)
            self._warning_filter = None

    def _pre(self, module, args):
        if compiling() or not self.pending:  # inside a compiled graph: trace to nothing
            return
        self._depth += 1
        if self._depth != 1:
            return
        if all(m is not module for m in self._candidates):
            # Held strongly until discovery: a slice like model[:2] lives for one call only.
            self._candidates.append(module)
            del self._candidates[:-MAX_CANDIDATES]
        if wrapper_of(module):
            # Gone before its graph is traced: global hooks there are guarded, and their removal
            # at discovery would recompile it.
            self._release()
        try:
            self.last_grad = torch.is_grad_enabled()
            self._last_call = None
            if self.last_grad and module.training:
                kwargs = _call_kwargs(module)
                if kwargs is not None:
                    self._last_call = (module, args, kwargs, torch.get_rng_state())
        except Exception:  # (a call we cannot read is just not replayed)
            self._last_call = None

    def _post(self, module, args, output):
        if compiling() or not self.pending:
            return
        self._depth = max(0, self._depth - 1)

    def discover(self, optimizer=None) -> None:
        """Watch the models that train: at the first backward or optimizer step, the root
        modules (contained in no other module) that hold the parameters of the modules the
        script called at top level, or of a live optimizer. Roots come from a one-off scan of
        live modules, so a model whose parts are called separately (``model.encoder(x)``,
        ``model[:2](x)``) is still watched as one model with qualified names. Later, an
        optimizer that steps none of the watched parameters brings in the models it trains
        (a GAN's generator that starts training after the discriminator)."""
        if optimizer is None and not self._dbg.watched.models:
            self.unwatched_backward += 1  # (this process's backward calls while nothing is watched)
        if self._dbg.watched.models or not self.pending:
            self._later(optimizer)
            return
        self.pending = False
        trained = {id(p) for m in self._candidates for p in m.parameters()}
        if optimizer is not None:
            trained |= _param_ids(optimizer)
        self._candidates = []
        call, self._last_call = self._last_call, None
        modules, optimizers = _live()
        for opt in optimizers:  # models whose optimizer exists but that train later (a GAN's generator)
            self._judged.add(id(opt))
            trained |= _param_ids(opt)
        if not trained:  # (no candidate either: a model compiled in place calls none in eager code)
            self._release()
            return
        self._attach_roots(modules, trained)
        if not any(compiled_in_place(m.module) for m in self._dbg.watched.models):
            self._release()  # (the graph of a model compiled in place guards on them: kept, idle, until stop)
        adopt_frameworks(self._dbg)
        if call is not None and optimizer is None:
            self._begin_first_step(*call)

    def _begin_first_step(self, module, args, kwargs, rng) -> None:
        """At the first backward: its step began with a forward that ran before the model was
        watched. Begin that step with what the forward was given, so that its batch is checked and,
        if it turns non-finite, it is replayed like every later step (on the CPU, as they are)."""
        dbg = self._dbg
        steps, watched = dbg.steps, dbg.watched
        if steps.state is not None or steps.count or steps.pending_backward or watched.model_of(module) is None:
            return
        st = steps.begin(now())
        x = first_float_tensor((args, kwargs))
        if x is None:
            x = first_float_tensor((args, kwargs), floating=False)
        if x is not None:
            dbg.hooks._input_stats(st, x)  # the check every step's batch gets at its root forward
        device = watched.device
        if steps.replay_budget and device is not None and device.type == "cpu":
            st.replay = (module, args, kwargs, rng)

    def _later(self, optimizer) -> None:
        """An optimizer seen for the first time after discovery that steps no watched parameter."""
        if optimizer is None or id(optimizer) in self._judged or not self._dbg.watched.models:
            return
        self._judged.add(id(optimizer))
        ids = _param_ids(optimizer)
        if ids and not ids & self._dbg.watched.param_ids:
            self._attach_roots(_live()[0], ids)
        adopt_frameworks(self._dbg)  # (a second Trainer's run makes a new optimizer)

    def _attach_roots(self, modules: list[nn.Module], trained: set[int]) -> None:
        contained = {id(c) for m in modules for c in m.children()}
        roots = []
        for m in modules:
            if id(m) in contained:
                continue
            ids = {id(p) for p in m.parameters()}
            if ids & trained:
                roots.append((len(ids), m, ids))
        # Largest first: a whole model covers the slices and parts of it the loop called.
        covered: set[int] = set(self._dbg.watched.param_ids)
        attached = False
        for _, m, ids in sorted(roots, key=lambda r: -r[0]):
            if ids - covered:
                self._dbg.attach(m)
                covered |= ids
                attached = True
        if attached:
            self._dbg.record_models()


def adopt_frameworks(debugger: Debugger) -> None:
    """When a training framework drives the loop, take its own numbers too (once per model found
    or new optimizer): the HF Trainer gets integrations/transformers.py's callback, a Lightning
    Trainer integrations/lightning.py's."""
    if "transformers.trainer" in sys.modules:
        from modeldebug.integrations.transformers import adopt_trainer

        adopt_trainer(debugger)
    if "lightning.pytorch" in sys.modules or "pytorch_lightning" in sys.modules:
        from modeldebug.integrations.lightning import adopt_trainer as adopt_lightning

        adopt_lightning(debugger)


def _live() -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """Every live module and optimizer (one scan of the garbage collector's objects)."""
    with warnings.catch_warnings():  # isinstance on torch.distributed.reduce_op warns
        warnings.simplefilter("ignore", FutureWarning)
        modules, optimizers = [], []
        for o in gc.get_objects():
            try:
                if isinstance(o, nn.Module):
                    modules.append(o)
                elif isinstance(o, torch.optim.Optimizer):
                    optimizers.append(o)
            except ReferenceError:  # a dead weakref.proxy (torch.compile leaves some): each isinstance raises
                pass
    return modules, optimizers


def _call_kwargs(module) -> dict | None:
    """The keyword arguments of the module call a global forward pre-hook runs in (that hook is given
    only the positional ones): read from the calling frame of ``Module._call_impl``, None elsewhere."""
    frame = sys._getframe(2)  # _call_impl (or its inner()) -> Discovery._pre -> here
    if frame.f_code.co_name not in ("inner", "_call_impl") or not frame.f_code.co_filename.endswith("module.py"):
        return None
    loc = frame.f_locals
    kwargs = loc.get("kwargs")
    return kwargs if loc.get("self") is module and isinstance(kwargs, dict) else None


def _param_ids(optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


class AutoDebugger(Debugger):
    """A Debugger that finds the models and optimizers by itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.exception: BaseException | None = None
        self.traceback_text: str | None = None
        self.discovery = Discovery(self)
        self.watched.finder = self.discovery.discover
        self.children = Children()

    def start(self) -> "AutoDebugger":
        started = self._started
        super().start()
        if not started:
            self.discovery.install()
            self.children.install()
        return self

    def forget_in_child(self) -> None:
        """In a forked child (a multiprocessing worker, a DataLoader worker): the monitor it inherited
        goes quiet and lets go of the hooks, since its rows could only be written through the
        parent's store connection (the parent counts the child in ``children``)."""
        self.discovery.remove()
        self.children.remove()
        self.hooks.remove()
        self._stopped = self.steps.stopped = True

    def pause(self) -> None:
        self.discovery.remove()
        super().pause()

    def last_forward_grad(self) -> bool | None:
        seen = super().last_forward_grad()
        return self.discovery.last_grad if seen is None else seen  # before the model was watched

    def record_models(self) -> None:
        """The run's models, stored once found: a run killed before it can close still names them."""
        try:
            self.store.update_run(self.run_id, models=self.model_infos())
        except Exception:  # the summary at stop writes them again
            pass

    def record_exception(self, exc: BaseException, tb) -> None:
        self.exception = exc
        self.traceback_text = "".join(traceback.format_exception(type(exc), exc, tb))[-20000:]

    def stop(self, status="completed", exit_code=None, error=None):
        self.discovery.remove()
        self.children.remove()
        if error is not None and self.traceback_text and not self._stopped:
            self.event(Traceback(text=self.traceback_text))
        if not self._stopped and (self.children.total or self.children.loader_workers or not self.watched.models):
            self.event(self.children.event(self.discovery.unwatched_backward))
        super().stop(status, exit_code, error)
