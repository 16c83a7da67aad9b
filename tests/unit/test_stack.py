"""eoforge up / down: the object store's size checked first; stack.json written atomically; down stops only its own."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eoforge.processes import identity_of
from eoforge.stack import (
    OBJECT_STORE_MB,
    STATE_FILE,
    StackState,
    object_store_bytes,
    read_state,
    up,
    write_state,
)


def test_object_store_defaults_to_at_most_2_gib_and_takes_an_explicit_size() -> None:
    assert 0 < object_store_bytes(None) <= OBJECT_STORE_MB * 2**20
    assert object_store_bytes(512) == 512 * 2**20


def test_a_too_small_object_store_fails_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="object_store_mb: 50 MiB"):
        up(tmp_path / "home", object_store_mb=50)
    assert not (tmp_path / "home" / "logs").exists()  # no MLflow or Ray was started (nor left behind)


# --------------------------------------------------------------------------- eoforge down: only its own processes
REPO = Path(__file__).resolve().parents[2]


def _sleeper() -> subprocess.Popen[bytes]:
    """A real process leading a group of its own, as ``eoforge up`` starts its services.

    Returned once ``/proc`` shows its command line: Popen returns when exec has closed the
    error pipe, which is before the kernel sets up the new program's arguments, so a read at
    that moment can see an empty command line (``eoforge up`` reads identities only after its
    services answer).
    """
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    deadline = time.monotonic() + 30
    while (found := identity_of(proc.pid)) is None or found.cmdline != ("sleep", "60"):
        assert time.monotonic() < deadline, f"sleep 60 (PID {proc.pid}) never showed its command line"
        os.sched_yield()
    return proc


def _record(home: Path, ray: subprocess.Popen[bytes], mlflow: subprocess.Popen[bytes], **changes: object) -> None:
    ray_id, mlflow_id = identity_of(ray.pid), identity_of(mlflow.pid)
    assert ray_id and mlflow_id
    state = StackState(
        str(home),
        ray.pid,
        mlflow.pid,
        "127.0.0.1:1",
        "http://127.0.0.1:2",
        "http://127.0.0.1:3",
        4,
        ray_id.start_ticks,
        list(ray_id.cmdline),
        mlflow_id.start_ticks,
        list(mlflow_id.cmdline),
    )
    home.mkdir(parents=True, exist_ok=True)
    write_state(home, dataclasses.replace(state, **changes))


def _down(home: Path, reap: subprocess.Popen[bytes] | None = None) -> str:
    """``eoforge down --home HOME`` as its own process; its output.

    ``reap``: a process of this test that down should stop, waited for here while down runs (as
    the parent that started it; ``eoforge up`` has exited by then in real use, so init reaps it).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    code = "from eoforge.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "down", "--home", str(home)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if reap is not None:
        assert reap.wait(timeout=60) == -signal.SIGTERM  # stopped by down
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.mark.parametrize(
    "mismatch",
    [{"ray_start_ticks": -1}, {"ray_cmdline": ["ray", "start", "--head"]}],
    ids=["start time", "command line"],
)
def test_down_stops_its_own_process_and_leaves_a_reused_pid_alone(tmp_path: Path, mismatch: dict) -> None:
    other, ours = _sleeper(), _sleeper()
    try:
        # the record says ray was a process with this PID but another start time / command line:
        # the PID now belongs to someone else
        _record(tmp_path / "home", other, ours, **mismatch)
        out = _down(tmp_path / "home", reap=ours)  # the matching one is stopped
        assert other.poll() is None  # the other one was not touched
        assert f"ray: PID {other.pid} (sleep 60) is not the recorded process" in out and "left alone" in out
        assert f"mlflow: stopped PID {ours.pid} (sleep 60)" in out
        assert not (tmp_path / "home" / STATE_FILE).exists()
    finally:
        for proc in (other, ours):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_down_leaves_alone_a_pid_recorded_without_identity_and_reports_exited_ones(tmp_path: Path) -> None:
    alive, exited = _sleeper(), _sleeper()
    try:
        _record(tmp_path / "home", alive, exited, ray_start_ticks=None, ray_cmdline=None)  # an older record
        exited.kill()
        exited.wait()
        out = _down(tmp_path / "home")
        assert alive.poll() is None
        assert f"ray: PID {alive.pid} (sleep 60): no start time and command line recorded" in out
        assert f"mlflow: PID {exited.pid} is no longer running" in out
    finally:
        if alive.poll() is None:
            alive.kill()
            alive.wait()


def test_stack_json_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    ray, mlflow = _sleeper(), _sleeper()
    try:
        _record(tmp_path, ray, mlflow)
        before = (tmp_path / STATE_FILE).read_text()
        assert read_state(tmp_path) == StackState(**json.loads(before))
        broken = dataclasses.replace(read_state(tmp_path), num_cpus=object())  # json cannot write it
        with pytest.raises(TypeError):
            write_state(tmp_path, broken)
        assert (tmp_path / STATE_FILE).read_text() == before  # the old record, intact
        assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary file left
    finally:
        for proc in (ray, mlflow):
            proc.kill()
            proc.wait()
