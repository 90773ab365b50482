"""The watched script's processes as `modeldebug run` sees them: the signals it passes on, and the
processes the script leaves behind when a signal ends it.

Standard library only: `modeldebug run` uses this before the script starts.

`modeldebug run` makes itself a child subreaper (Linux): a process the script started and left
behind (a DataLoader worker, a server) becomes this process's child when the script exits, so a
run ended by a signal can end them too instead of leaving them orphaned. Elsewhere only the
script's own process is signalled.
"""

from __future__ import annotations

import os
import signal
import sys
import time

GRACE_S = 5.0  # a signalled script's time to write its last steps before it is killed
LEFTOVER_GRACE_S = 2.0  # processes left behind: SIGTERM, then SIGKILL after this
PASSED_ON = (signal.SIGTERM, signal.SIGHUP)  # SIGINT is passed on by runner.py as before
PR_SET_CHILD_SUBREAPER = 36


def signal_name(signum: int | None) -> str | None:
    if not signum:
        return None
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def become_subreaper() -> bool:
    """Processes the script leaves behind become this process's children (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int | None = None) -> list[int]:
    """The live child processes of ``pid`` (this process by default), from /proc; [] without it."""
    pid = os.getpid() if pid is None else pid
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # it ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(entry))
    return found


def end_leftovers(grace_s: float = LEFTOVER_GRACE_S) -> list[int]:
    """End the processes the script left behind (this process's children once it has exited):
    SIGTERM once, then SIGKILL to those still there after ``grace_s``. Returns the pids ended."""
    sent: dict[int, int] = {}  # pid -> the last signal sent to it
    deadline = time.monotonic() + grace_s
    while True:
        _reap()
        left = children()
        now = time.monotonic()
        if not left or now >= deadline + grace_s:  # still there a grace after SIGKILL: do not hang
            return list(sent)
        signum = signal.SIGKILL if now >= deadline else signal.SIGTERM
        for pid in left:
            if sent.get(pid) != signum:
                _send(pid, signum)
                sent[pid] = signum
        time.sleep(0.05)


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:  # it ended meanwhile
        pass


def _reap() -> None:
    """Collect the exit status of adopted children that ended (they are not subprocess.Popen's)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
