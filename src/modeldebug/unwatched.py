"""A run without a single training step says so, and why, instead of "No problems found."

Zero steps happen when the training ran where the monitor was not: in worker processes (Hogwild
with ``torch.multiprocessing``), in a script the watched one starts with ``subprocess``, before a
crash, or in a process that never imported torch. What the watched process saw of it is in its
``process_activity`` event (collect/children.py); the sentence built here is ``run.unwatched.reason``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from modeldebug.events import ProcessActivity
from modeldebug.types import RunInfo, Unwatched

if TYPE_CHECKING:
    from modeldebug.evidence import Evidence

log = logging.getLogger(__name__)

_KINDS = {"multiprocessing": ("multiprocessing worker", "running"), "fork": ("forked process", "from"),
          "subprocess": ("subprocess", ""), "system": ("shell command", ""), "spawn": ("spawned process", "")}


def run_with_unwatched(evidence: Evidence) -> RunInfo:
    """The run's info, with ``unwatched`` set when it holds no training step."""
    run = evidence.run
    if len(evidence.steps) or run.steps or run.status == "running":
        return run
    try:
        return run.model_copy(update={"unwatched": unwatched(evidence)})
    except Exception:  # an odd stored event must not cost the user the report
        log.exception("modeldebug could not say why run %s holds no training step", run.id)
        return run


def unwatched(evidence: Evidence) -> Unwatched:
    run = evidence.run
    activity = (evidence.events_of(ProcessActivity) or [None])[-1]
    children = list(activity.children) if activity else []
    backward = activity.unwatched_backward_calls if activity else 0
    if run.models:
        names = ", ".join(f"`{m.name}`" for m in run.models[:3])
        seen = (f"the script ended ({run.status}) before the first training step of {names}"
                if run.status != "completed" else f"{names} was found but no training step of it was seen")
    elif backward:
        seen = (f"{backward} backward() call(s) were seen in the watched process, but no module it called holds "
                "the parameters they trained")
    elif activity is None:  # (a zero-code run writes its activity once torch is imported)
        seen = "the monitor saw nothing in the watched process: the script did not import torch there"
    else:
        seen = "no backward() was seen in the watched process"
    reason = f"No training was seen: {seen}."
    if children:
        total = activity.children_total
        parts = [_describe(c) for c in children[:4]]
        more = total - sum(c.get("count", 0) for c in children[:4])
        listed = ", ".join(parts) + (f" and {more} more" if more > 0 else "")
        reason += (f" The script started {total} child process{'es' if total != 1 else ''} ({listed}): training "
                   "there is not watched (watch it in the process that trains, e.g. `md.watch(model, optimizer)` "
                   "in the worker function, or run that script itself under `modeldebug run`).")
    return Unwatched(reason=reason, backward_calls=backward, child_processes=children)


def _describe(child: dict) -> str:
    noun, link = _KINDS.get(child.get("kind", ""), ("process", ""))
    n = int(child.get("count", 1))
    target = str(child.get("target", ""))
    what = f"`{target}`" if target else ""
    return f"{n} {noun}{'es' if n != 1 and noun.endswith('ss') else 's' if n != 1 else ''}" + (
        f" {link} {what}" if link and what else f": {what}" if what else "")
