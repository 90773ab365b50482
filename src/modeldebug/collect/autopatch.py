"""Zero-code-change instrumentation: watch a script that never imports modeldebug.

``modeldebug run -- python train.py`` starts the script with ``collect/boot`` first on
PYTHONPATH; its ``sitecustomize`` calls :func:`install_from_env`, which waits for the script to
import torch and then starts an auto-discovering ``AutoDebugger`` (``collect/auto.py``):

* steps come from the global optimizer step hooks (any optimizer, created anywhere);
* models are the top-level modules the script calls (found with global module hooks that are
  removed as soon as the first backward or optimizer step shows which modules train);
* the loss is the tensor ``.backward()`` is called on; evaluation losses are loss calls made
  under ``torch.no_grad()`` or in eval mode;
* when the process ends, normally or through an exception, the run is closed and the
  exception recorded. The parent ``modeldebug run`` then diagnoses the run from the store;
* SIGTERM and SIGHUP (when the script sets no handler of its own) raise SystemExit(128+signum),
  so the run's last steps are written and it is closed as ``terminated``;
* processes the script starts are counted, not watched (``collect/children.py``): a forked child's
  inherited monitor switches itself off, and Python processes it starts are not given the run.
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
    if _launches_accelerate(argv):
        return True  # `accelerate launch` trains nothing itself: the script it starts is watched
    if not any("torchrun" in a or "torch.distributed" in a for a in argv):
        return False  # the common case, decided without importing collect.distributed
    from modeldebug.collect.distributed import is_launcher

    return is_launcher()


def _launches_accelerate(argv: list[str]) -> bool:
    """``accelerate launch ...`` (or ``python -m accelerate.commands.launch``): it starts the training
    script as a child process (or, with several processes, as torchrun does)."""
    head = argv[:4]
    if any(os.path.basename(a) == "accelerate" for a in head[:3]) and "launch" in head:
        return True
    return any(a in ("accelerate.commands.launch", "accelerate.commands.accelerate_cli") for a in head)


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

    fixing = _fix_run()
    if fixing is not None:
        fixing.before_collector()
    try:
        from modeldebug.collect.auto import AutoDebugger
        from modeldebug.collect.distributed import prepare_rank_run, process_rank

        config = DebuggingConfig.model_validate(settings.get("config") or {})
        ranked = process_rank()  # a torchrun worker: rank 0 writes the run, rank r "<run_id>.rank<r>"
        _active = AutoDebugger(
            config,
            store=settings.get("store"),
            run_id=prepare_rank_run(settings, ranked[0]) if ranked else settings.get("run_id"),
            command=settings.get("command"),
            existing_run=True,
        )
        _active.start()
        if fixing is not None:
            fixing.after_collector(_active)
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
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forked_child)
    _end_on_termination()


def _fix_run():
    """``modeldebug fix``'s re-runs: its module (the candidate, the window's end), else None."""
    if not any(k in os.environ for k in ("MODELDEBUG_FIX", "MODELDEBUG_STOP_AFTER", "MODELDEBUG_SEED")):
        return None
    try:
        from modeldebug.fixes import child

        return child
    except Exception:  # the script runs as it is
        return None


def _forked_child() -> None:
    """A forked child (a Hogwild worker, a DataLoader worker) inherits the monitor: it goes quiet
    there and the parent's run is closed by the parent only."""
    global _active
    dbg, _active = _active, None
    if dbg is not None:
        try:
            dbg.forget_in_child()
        except Exception:  # the child runs on unwatched either way
            pass


_terminated_by = None  # SIGTERM or SIGHUP, when it ended the script through _terminate
_finishing = False


def _end_on_termination() -> None:
    """SIGTERM and SIGHUP (a job scheduler's stop, a closed ssh session) end the script as an
    exception would, so its finally blocks run and the run's last steps are written at exit (the
    default action kills the process on the spot). A handler the script sets later replaces ours."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, _terminate)
        except (ValueError, OSError):  # not the main thread, or no such signal here
            pass


def _terminate(signum, frame):
    global _terminated_by
    # Only the first one ends the script: `modeldebug run` passes on what it is sent, and a
    # scheduler may signal the whole process group too, so the script often gets two.
    if _terminated_by is not None or _finishing:
        return
    _terminated_by = signum
    raise SystemExit(128 + signum)


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
    global _active, _finishing
    dbg, _active = _active, None
    if dbg is None:
        return
    _finishing = True
    previous = _ignore_sigint()
    try:
        exc = dbg.exception
        if _terminated_by is not None:
            dbg.stop("terminated")
        elif exc is None:
            dbg.stop("completed")
        elif isinstance(exc, KeyboardInterrupt):
            dbg.stop("interrupted", error=exc)
        else:
            dbg.stop("crashed", error=exc)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGINT, previous)
