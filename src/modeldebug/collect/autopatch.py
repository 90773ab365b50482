"""Zero-code-change instrumentation: watch a script that never imports modeldebug.

``modeldebug run -- python train.py`` starts the script with ``collect/boot`` first on
PYTHONPATH; its ``sitecustomize`` calls :func:`install_from_env`, which waits for the script to
import torch and then starts an auto-discovering :class:`AutoDebugger`:

* steps come from the global optimizer step hooks (any optimizer, created anywhere);
* models are the top-level modules the script calls (found with global module hooks that are
  removed as soon as the first backward or optimizer step shows which modules train);
* the loss is the tensor ``.backward()`` is called on; evaluation losses are loss calls made
  under ``torch.no_grad()`` or in eval mode;
* when the process ends, normally or through an exception, the run is closed and the
  exception recorded. The parent ``modeldebug run`` then diagnoses the run from the store.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import json
import os
import sys
from typing import Any

# This module is imported by sitecustomize when a watched process starts: it imports nothing
# more than the standard library's start-up already has, and the collector (torch, pydantic,
# the run store) only once the script imports torch.

ENV_RUN = "MODELDEBUG_RUN"  # JSON: {"run_id", "store", "config", "command"}


def install_from_env() -> None:
    """Called from sitecustomize: start watching once torch is imported, if asked to."""
    spec = os.environ.get(ENV_RUN)
    if not spec or _is_helper_process():
        return
    settings = json.loads(spec)
    if _is_launcher():
        # torchrun trains nothing itself: its workers inherit MODELDEBUG_RUN and each watches its rank.
        return
    # Only the process that was started is watched, not Python processes it starts in turn.
    os.environ.pop(ENV_RUN, None)
    if "torch" in sys.modules:
        _start(settings)
    else:
        sys.meta_path.insert(0, _AfterImport("torch", lambda: _start(settings)))


def _is_launcher() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    if not any("torchrun" in a or "torch.distributed" in a for a in argv):
        return False  # the common case, decided without importing collect.distributed
    from modeldebug.collect.distributed import is_launcher

    return is_launcher()


def _is_helper_process() -> bool:
    # multiprocessing's spawn/forkserver children (DataLoader workers) run no training.
    return any(a.startswith("--multiprocessing-fork") or "multiprocessing" in a for a in sys.argv[:3])


class _AfterImport:
    """Runs a callback right after a module finishes importing (a post-import hook; a meta path
    finder by protocol, without importlib.abc)."""

    def __init__(self, name: str, callback):
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader, callback = spec.loader, self.callback

        class _Loader:
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                callback()

        spec.loader = _Loader()
        return spec


_active = None  # the AutoDebugger of this process


def _start(settings: dict[str, Any]) -> None:
    global _active
    from modeldebug.config import DebuggingConfig

    try:
        from modeldebug.collect.distributed import prepare_rank_run, process_rank

        config = DebuggingConfig.model_validate(settings.get("config") or {})
        ranked = process_rank()  # a torchrun worker: rank 0 writes the run, rank r "<run_id>.rank<r>"
        _active = auto_debugger_class()(
            config,
            store=settings.get("store"),
            run_id=prepare_rank_run(settings, ranked[0]) if ranked else settings.get("run_id"),
            command=settings.get("command"),
            existing_run=True,
        )
        _active.start()
    except Exception:  # the user's script must run even when the monitor cannot
        import logging

        logging.getLogger(__name__).exception("modeldebug could not start; the script runs unwatched")
        _active = None
        return
    previous_hook = sys.excepthook

    def excepthook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            _ignore_sigint()
        if _active is not None:
            _active.record_exception(exc, tb)
        previous_hook(exc_type, exc, tb)

    sys.excepthook = excepthook
    atexit.register(_finish)


def _ignore_sigint():
    """The script has ended (an exception reached the top, or the interpreter exits): a second
    SIGINT must not cut the run's last writes short. A terminal's Ctrl-C reaches this process and
    `modeldebug run`, which passes on a SIGINT while the script is still alive, so the script can
    get two. Returns the handler to restore, or None."""
    import signal

    if sys.flags.interactive:  # `python -i`: the prompt that follows keeps its Ctrl-C
        return None
    try:
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread, or no signals here
        return None


def _finish() -> None:
    global _active
    dbg, _active = _active, None
    if dbg is None:
        return
    previous = _ignore_sigint()
    try:
        exc = dbg.exception
        if exc is None:
            dbg.stop("completed")
        elif isinstance(exc, KeyboardInterrupt):
            dbg.stop("interrupted", error=exc)
        else:
            dbg.stop("crashed", error=exc)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGINT, previous)


_auto_class = None


def auto_debugger_class():
    """The AutoDebugger class; built on first use because it subclasses the torch-importing Debugger."""
    global _auto_class
    if _auto_class is None:
        _auto_class = _make_auto_debugger()
    return _auto_class


def _make_auto_debugger():
    import gc
    import traceback
    import warnings

    from torch import nn
    from torch.nn.modules import module as module_mod

    from modeldebug.collect.session import Debugger

    class AutoDebugger(Debugger):
        """A Debugger that finds the models and optimizers by itself."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.exception: BaseException | None = None
            self.traceback_text: str | None = None
            self._candidates: list = []  # modules called at top level before discovery
            self._depth = 0
            self._discovery_handles: list[Any] = []

        def start(self):
            super().start()
            self._discovery_handles = [
                module_mod.register_module_forward_pre_hook(self._global_pre),
                module_mod.register_module_forward_hook(self._global_post, always_call=True),
            ]
            return self

        def _remove_hooks(self):
            for h in self._discovery_handles:
                h.remove()
            self._discovery_handles = []
            super()._remove_hooks()

        def record_exception(self, exc: BaseException, tb) -> None:
            self.exception = exc
            self.traceback_text = "".join(traceback.format_exception(type(exc), exc, tb))[-20000:]

        def stop(self, status="completed", exit_code=None, error=None):
            if error is not None and self.traceback_text:
                self._event("traceback", {"text": self.traceback_text})
            super().stop(status, exit_code, error)

        # Global hooks, only until discovery: keep the top-level modules the script calls.
        def _global_pre(self, module, args):
            self._depth += 1
            if self._depth == 1 and all(m is not module for m in self._candidates):
                # Held strongly until discovery: a slice like model[:2] lives for one call only.
                self._candidates.append(module)
                del self._candidates[:-64]

        def _global_post(self, module, args, output):
            self._depth = max(0, self._depth - 1)

        def _discover(self, optimizer=None) -> None:
            """Watch the models that train: at the first backward or optimizer step, the root
            modules (contained in no other module) that hold the parameters of the modules the
            script called at top level, or of the optimizer. Roots come from a one-off scan of
            live modules, so a model whose parts are called separately (``model.encoder(x)``,
            ``model[:2](x)``) is still watched as one model with qualified names."""
            if self._models or not self._discovery_handles:
                return
            for h in self._discovery_handles:
                h.remove()
            self._discovery_handles = []
            trained = {id(p) for m in self._candidates for p in m.parameters()}
            if optimizer is not None:
                trained |= {id(p) for g in optimizer.param_groups for p in g["params"]}
            self._candidates = []
            if not trained:
                return
            with warnings.catch_warnings():  # isinstance on torch.distributed.reduce_op warns
                warnings.simplefilter("ignore", FutureWarning)
                modules = [o for o in gc.get_objects() if isinstance(o, nn.Module)]
            contained = {id(c) for m in modules for c in m.children()}
            roots = []
            for m in modules:
                if id(m) in contained:
                    continue
                ids = {id(p) for p in m.parameters()}
                if ids & trained:
                    roots.append((len(ids), m, ids))
            # Largest first: a whole model covers the slices and parts of it the loop called.
            covered: set[int] = set()
            for _, m, ids in sorted(roots, key=lambda r: -r[0]):
                if ids - covered:
                    self.attach(m)
                    covered |= ids
        def before_backward(self, tensor):
            self._discover()
            super().before_backward(tensor)

        def _owns(self, optimizer):
            self._discover(optimizer)
            return super()._owns(optimizer)

    return AutoDebugger
