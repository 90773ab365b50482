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


def wanted() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class Status:
    """Reads the run's progress from the store in a background thread; the findings so far come from
    ``diagnosis`` (a LiveDiagnosis: the newest is named on the line as it appears)."""

    def __init__(self, run_id: str, store_path: str | os.PathLike, diagnosis=None):
        self.run_id = run_id
        self.store_path = Path(store_path)
        self.text = "modeldebug: waiting for the first step"
        self.diagnosis = diagnosis
        self._stop = threading.Event()
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
        try:
            while not self._stop.wait(1.0):
                try:
                    store = store or RunStore(self.store_path, read_only=True)
                    steps, last_loss = store.progress(self.run_id)
                except (DebuggingError, sqlite3.Error):
                    continue
                loss = f" · loss {last_loss:.4g}" if last_loss is not None else ""
                self.text = f"modeldebug ▸ step {steps}{loss}{self._findings()}"
        finally:
            if store is not None:
                store.close()

    def _findings(self) -> str:
        d = self.diagnosis
        if d is None or not d.passes:
            return ""
        serious = [f for f in d.findings if f.severity in ("high", "medium") and not f.suppressed]
        if not serious:
            return " · no problems so far"
        high = sum(1 for f in serious if f.severity == "high")
        text = f" · {len(serious)} finding{'s' if len(serious) != 1 else ''}" + (f" ({high} high)" if high else "")
        newest = d.newest
        if newest is not None:
            where = f" at {newest.location}" if newest.location else ""
            step = f" (step {newest.step})" if newest.step is not None else ""
            text += f" · new: {newest.severity.upper()} {newest.kind}{where}{step}"
        return text


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


def pump(master: int, status: Status, proc: subprocess.Popen | None = None) -> None:
    """Copy the script's output here, keeping the status line below it, until the script's own
    process has exited (``proc``; else until its terminal closes). Processes it started that still
    hold the terminal (a server left running) have their output copied on in the background."""
    out = _Output()
    shown = ""  # the status text on screen now ("" when none)
    at_line_start = True  # the status line never interrupts a line the script is still writing
    last_draw = 0.0
    handed_on = False

    def draw() -> None:
        nonlocal shown, last_draw
        text = status.text[: _columns() - 1]
        out.write((CLEAR + text).encode())
        shown, last_draw = text, time.monotonic()

    try:
        exited_at = None
        while True:
            if exited_at is None and proc is not None and proc.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at >= DRAIN_S:
                handed_on = True  # what is left belongs to processes the script left behind
                break
            try:
                ready, _, _ = select.select([master], [], [], 0.05 if exited_at is not None else 0.5)
            except InterruptedError:
                continue
            if ready:
                chunk = _read(master)
                if not chunk:
                    break
                if shown:
                    out.write(CLEAR.encode())
                    shown = ""
                out.write(chunk)
                at_line_start = chunk.endswith(b"\n")
                if at_line_start and exited_at is None:
                    draw()
            elif exited_at is not None:
                handed_on = True
                break
            elif at_line_start and time.monotonic() - last_draw >= 1.0 and status.text != shown:
                draw()
    finally:
        if shown:
            out.write(CLEAR.encode())
        status.stop()
        if handed_on:
            threading.Thread(target=_copy_rest, args=(master, out), daemon=True, name="modeldebug-output").start()
        else:
            os.close(master)


DRAIN_S = 0.5  # after the script exits, its last output is copied for at most this long


class _Output:
    """This process's stdout; after the terminal is gone (a closed ssh session: EIO) writes are dropped."""

    def __init__(self):
        self.stream = sys.stdout.buffer
        self.ok = True

    def write(self, data: bytes) -> None:
        if not self.ok:
            return
        try:
            self.stream.write(data)
            self.stream.flush()
        except OSError:
            self.ok = False


def _read(master: int) -> bytes:
    try:
        return os.read(master, 65536)
    except OSError as exc:  # EIO: every process on the script's side of the terminal closed it
        if exc.errno != errno.EIO:
            raise
        return b""


def _copy_rest(master: int, out: _Output) -> None:
    """Output of processes the script left holding its terminal, copied until they close it."""
    try:
        while True:
            chunk = _read(master)
            if not chunk:
                break
            out.write(chunk)
    except OSError:
        pass
    finally:
        os.close(master)


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
