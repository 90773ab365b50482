"""The live status line of `modeldebug run`: steps, loss and findings so far, under the script's output.

Shown only when stdout and stderr are both terminals. The script then runs on a pseudo-terminal
whose output this process copies to the real one: the script still sees a terminal (colours and
progress bars keep working), and the status line is cleared before each chunk of the script's
output and drawn again after it, so the two never overwrite each other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Sequence

CLEAR = "\r\x1b[2K"
RULES_EVERY_S = 10.0  # findings so far: the rules run on the evidence this often (less if slow)


def wanted() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class Status:
    """Reads the run's progress from the store in a background thread."""

    def __init__(self, run_id: str, store_path: str | os.PathLike):
        self.run_id = run_id
        self.store_path = Path(store_path)
        self.text = "modeldebug: waiting for the first step"
        self._stop = threading.Event()
        self._findings = ""
        self._thread = threading.Thread(target=self._poll, daemon=True, name="modeldebug-status")

    def start(self) -> "Status":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        from modeldebug.errors import DebuggingError
        from modeldebug.store import RunStore

        store = None
        next_rules = time.monotonic() + RULES_EVERY_S
        try:
            while not self._stop.wait(1.0):
                try:
                    store = store or RunStore(self.store_path, read_only=True)
                    steps, last_loss = store.progress(self.run_id)
                except (DebuggingError, sqlite3.Error):
                    continue
                loss = f" · loss {last_loss:.4g}" if last_loss is not None else ""
                if time.monotonic() >= next_rules and steps:
                    took = self._run_rules(store)
                    next_rules = time.monotonic() + max(RULES_EVERY_S, 20 * took)
                self.text = f"modeldebug ▸ step {steps}{loss}{self._findings}"
        finally:
            if store is not None:
                store.close()

    def _run_rules(self, store) -> float:
        started = time.monotonic()
        try:
            from modeldebug.rules import run_rules

            findings = run_rules(store.load_evidence(self.run_id))
            serious = [f for f in findings if f.severity in ("high", "medium")]
            high = sum(1 for f in serious if f.severity == "high")
            self._findings = f" · {len(serious)} finding{'s' if len(serious) != 1 else ''}" + (
                f" ({high} high)" if high else ""
            ) if serious else " · no problems so far"
        except Exception:  # a status line must never get in the way
            pass
        return time.monotonic() - started


def spawn(command: Sequence[str], env: dict) -> tuple[subprocess.Popen, int]:
    """Start ``command`` with its stdout and stderr on a new pseudo-terminal; returns it and the master fd."""
    master, slave = pty.openpty()
    _copy_window_size(sys.stdout.fileno(), slave)
    try:
        proc = subprocess.Popen(command, env=env, stdout=slave, stderr=slave, close_fds=True)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, master


def pump(master: int, status: Status) -> None:
    """Copy the script's output here until it closes its terminal, keeping the status line below it."""
    out = sys.stdout.buffer
    shown = ""  # the status text on screen now ("" when none)
    at_line_start = True  # the status line never interrupts a line the script is still writing
    last_draw = 0.0

    def draw() -> None:
        nonlocal shown, last_draw
        text = status.text[: _columns() - 1]
        out.write((CLEAR + text).encode())
        out.flush()
        shown, last_draw = text, time.monotonic()

    try:
        while True:
            try:
                ready, _, _ = select.select([master], [], [], 0.5)
            except InterruptedError:
                continue
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError as exc:  # EIO: the script's side of the terminal is closed (it exited)
                    if exc.errno != errno.EIO:
                        raise
                    chunk = b""
                if not chunk:
                    break
                if shown:
                    out.write(CLEAR.encode())
                    shown = ""
                out.write(chunk)
                out.flush()
                at_line_start = chunk.endswith(b"\n")
                if at_line_start:
                    draw()
            elif at_line_start and time.monotonic() - last_draw >= 1.0 and status.text != shown:
                draw()
    finally:
        if shown:
            out.write(CLEAR.encode())
            out.flush()
        os.close(master)
        status.stop()


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns or 80  # 0 on a terminal with no size set
    except OSError:
        return 80


def _copy_window_size(src_fd: int, dst_fd: int) -> None:
    try:
        size = fcntl.ioctl(src_fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(dst_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass
