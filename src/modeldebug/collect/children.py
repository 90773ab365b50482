"""The processes a watched script starts, so that a run that saw no training can say where it may
have gone (Hogwild workers, a training script started with subprocess). Counted in the process that
starts them, at no cost per step:

* multiprocessing, any start method (torch.multiprocessing too): ``BaseProcess.start`` is wrapped
  while watching, and its target named; DataLoader workers are counted apart;
* ``os.fork()`` outside multiprocessing: ``os.register_at_fork`` (registered once per process);
* ``subprocess``, ``os.system``, ``os.posix_spawn``, ``os.spawn*``: their audit events
  (``sys.addaudithook``, added once per process: a hook cannot be removed, so it returns at once
  while nothing is watched).

Training in those processes is not watched: a forked child inherits this process's monitor, which
switches itself off there (its rows could only go through the parent's store connection), and a
started Python process is not given the run (``collect/autopatch``).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from multiprocessing.process import BaseProcess
from typing import Any

from modeldebug.collect.patches import hide_our_frames
from modeldebug.events import ProcessActivity

MAX_KINDS = 16  # distinct (kind, target) pairs kept; the total counts them all
_AUDITED = {"subprocess.Popen": "subprocess", "os.system": "system", "os.posix_spawn": "spawn",
            "os.spawn": "spawn"}

_current: "Children | None" = None  # the counter of the watching Debugger
_hooked = False
_local = threading.local()  # inside BaseProcess.start: its own fork is not counted again


class Children:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.total = 0
        self.loader_workers = 0
        self._original: Any = None

    def install(self) -> None:
        global _current, _hooked
        _current = self
        if not _hooked:
            _hooked = True
            sys.addaudithook(_audit)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_parent=_forked)
        if self._original is None and not getattr(BaseProcess.start, "_modeldebug", False):
            self._original = BaseProcess.start
            BaseProcess.start = _wrap_start(self._original)

    def remove(self) -> None:
        global _current
        if _current is self:
            _current = None
        if self._original is not None:
            BaseProcess.start = self._original
            self._original = None

    def add(self, kind: str, target: str) -> None:
        key = (kind, target[:200])
        if key in self.counts or len(self.counts) < MAX_KINDS:
            self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1

    def started(self, process: BaseProcess) -> None:
        target = getattr(process, "_target", None)
        args = getattr(process, "_args", ())
        if getattr(target, "__module__", "") == "torch.multiprocessing.spawn" and args and callable(args[0]):
            target = args[0]  # torch.multiprocessing.spawn(fn, ...) runs fn through its own wrapper
        if target is None:  # a Process subclass with its own run()
            name = f"{type(process).__module__}.{type(process).__qualname__}.run"
        else:
            name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
        if name.startswith("torch.utils.data."):
            self.loader_workers += 1
        else:
            self.add("multiprocessing", name)

    def event(self, unwatched_backward_calls: int) -> ProcessActivity:
        children = [{"kind": k, "target": t, "count": n} for (k, t), n in self.counts.items()]
        return ProcessActivity(unwatched_backward_calls=unwatched_backward_calls, children=children,
                               children_total=self.total, loader_workers=self.loader_workers)


def _wrap_start(original):
    @functools.wraps(original)
    def start(self):
        counter = _current
        if counter is not None:
            try:
                counter.started(self)
            except Exception:  # counting is a nicety: the process starts all the same
                pass
        outer = not getattr(_local, "starting", False)
        _local.starting = True
        try:
            return original(self)
        except BaseException as exc:
            hide_our_frames(exc, __file__)
            raise
        finally:
            if outer:
                _local.starting = False

    start._modeldebug = True
    return start


def _forked() -> None:
    counter = _current
    if counter is not None and not getattr(_local, "starting", False):
        try:
            counter.add("fork", "os.fork()")
        except Exception:
            pass


def _audit(event: str, args: tuple) -> None:
    # An audit hook that raises stops the call it audits: nothing here may raise.
    if _current is None:
        return
    kind = _AUDITED.get(event)
    if kind is None:
        return
    try:
        if kind == "subprocess":
            command = args[1] if isinstance(args[1], (list, tuple)) else [args[1] if args[1] is not None else args[0]]
            command = " ".join(_text(a) for a in list(command)[:6])
        else:
            command = _text(args[0]) if event == "os.system" else " ".join(_text(a) for a in list(args[1])[:6])
        _current.add(kind, command)
    except Exception:
        pass


def _text(arg: Any) -> str:
    return os.fsdecode(arg) if isinstance(arg, (str, bytes, os.PathLike)) else str(arg)
