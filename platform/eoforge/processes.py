"""Who a PID is: start time and command line, so that a recorded PID is never taken for another process.

A PID is reused once its process has exited. ``eoforge up`` records each service's PID with its
start time (``/proc/<pid>/stat`` field 22, clock ticks since boot) and command line
(``/proc/<pid>/cmdline``); ``eoforge down`` stops a recorded PID only if both still match. Linux
only (``/proc``): elsewhere :func:`identity_of` returns None and nothing is stopped.

A dead leader whose process group still has members is the recorded group itself: Linux does not
hand out a PID while it is still in use as a process group ID, so no other process can lead a
group of that number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as ``/proc`` shows it: ``pid``, ``start_ticks`` (clock ticks after boot), ``cmdline``."""

    pid: int
    start_ticks: int
    cmdline: tuple[str, ...]

    def describe(self) -> str:
        """``PID 123 (cmd args...)``, the command line cut to 120 characters."""
        cmd = " ".join(self.cmdline)
        return f"PID {self.pid} ({cmd[:117] + '...' if len(cmd) > 120 else cmd})"


def identity_of(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid``; None when there is none (or no ``/proc`` to ask)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    start_ticks = int(fields[19])  # field 22 of the line; fields[0] is field 3 (state)
    cmdline = tuple(a.decode(errors="replace") for a in raw.split(b"\0")[:-1]) if raw else ()
    return ProcessIdentity(pid, start_ticks, cmdline)


def group_exists(pgid: int) -> bool:
    """Whether any process is still in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded_status(recorded: ProcessIdentity | None, pid: int) -> tuple[str, str]:
    """What became of a recorded process: (verdict, explanation).

    Verdicts: ``ours`` (same PID, start time and command line: safe to stop its group),
    ``group`` (the leader exited, members of its group remain: still ours), ``gone`` (nothing
    left), ``other`` (the PID now belongs to another process: leave it alone), ``unknown`` (no
    identity recorded, or none can be read here: leave it alone).
    """
    live = identity_of(pid)
    if recorded is None:
        if live is None and not group_exists(pid):
            return "gone", f"PID {pid} is no longer running"
        shown = live.describe() if live else f"PID {pid}"
        return "unknown", f"{shown}: no start time and command line recorded for it, left alone (check it yourself)"
    if live is None:
        if group_exists(pid):
            return "group", f"PID {pid} exited; the rest of its process group is stopped"
        return "gone", f"PID {pid} is no longer running"
    if live.start_ticks == recorded.start_ticks and live.cmdline == recorded.cmdline:
        return "ours", live.describe()
    why = "started at another time" if live.start_ticks != recorded.start_ticks else "runs another command"
    return "other", f"{live.describe()} is not the recorded process ({why}): left alone"


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``SystemExit`` (like Ctrl-C raises KeyboardInterrupt).

    Python's default for them ends the process at once, running no ``except``/``finally``, so a
    starter killed halfway would leave the services it started running, recorded nowhere. With
    this, its clean-up clauses stop them. Outside the main thread (no signal handlers can be set
    there) it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
