"""``eoforge up`` stopped by a signal while it starts leaves nothing running (real MLflow, real Ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eoforge.stack import STATE_FILE

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EOFORGE_CLI = [sys.executable, "-c", "from eoforge.cli import main; main()"]


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, state) of every process ``/proc`` shows."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        found.append((int(entry.name), int(fields[1]), int(fields[2]), fields[0]))
    return found


def _wait_for(condition, what: str, proc: subprocess.Popen[str], timeout_s: float = 120):
    """Poll ``condition()`` until it returns something truthy (the starter still running), or fail."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert proc.poll() is None, f"eoforge up exited before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        try:
            proc.wait(timeout=0.1)  # returns early only if it exited (checked above)
        except subprocess.TimeoutExpired:
            pass
    return result


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_up_stopped_while_starting_stops_what_it_started_and_records_nothing(tmp_path: Path, sig) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    proc = subprocess.Popen(
        [*EOFORGE_CLI, "up", "--home", str(home), "--random-ports"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    groups: set[int] = set()
    try:
        # its services lead groups of their own: the first one (MLflow) is up once a child leads one
        started = _wait_for(
            lambda: {pid for pid, ppid, pgid, _ in _processes() if ppid == proc.pid and pgid == pid},
            "service started",
            proc,
        )
        groups |= started
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err[-2000:]
        assert not (home / STATE_FILE).exists()  # nothing recorded: nothing was left to stop later
        # every process of the groups it started is gone (a zombie only waits for init to reap it);
        # a SIGKILL sent last is delivered asynchronously, so allow it a few seconds to land
        deadline = time.monotonic() + 10
        while left := [p for p in _processes() if p[2] in groups and p[3] != "Z"]:
            assert time.monotonic() < deadline, f"left running (pid, ppid, pgid, state): {left}"
            os.sched_yield()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
