"""What ``eoforge up`` records: the stack's ports and processes, in ``$EOFORGE_HOME/stack.json``.

The record is written atomically (a temporary file in the same folder, fsync, ``os.replace``) and
holds each service leader's start time and command line (:mod:`eoforge.processes`), so
``eoforge down`` stops only processes that are still the ones it started.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eoforge.processes import ProcessIdentity, recorded_status

STATE_FILE = "stack.json"


@dataclass
class StackPorts:
    """Ports of the local stack; the defaults are the tools' usual ones."""

    ray_gcs: int = 6379
    ray_dashboard: int = 8265
    ray_client: int = 10001
    mlflow: int = 5000
    extra: dict[str, int] = field(default_factory=dict)

    @classmethod
    def random(cls) -> StackPorts:
        """Free ports for every service, so a second stack (tests) can run beside the default one."""
        agent = (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
        return cls(free_port(), free_port(), free_port(), free_port(), extra={k: free_port() for k in agent})


@dataclass
class StackState:
    """What ``eoforge up`` started (persisted as JSON)."""

    home: str
    ray_pid: int
    mlflow_pid: int
    ray_address: str
    ray_dashboard_url: str
    mlflow_url: str
    num_cpus: int
    #: start time (clock ticks after boot) and command line of each leader (None: an older record)
    ray_start_ticks: int | None = None
    ray_cmdline: list[str] | None = None
    mlflow_start_ticks: int | None = None
    mlflow_cmdline: list[str] | None = None

    def recorded(self, service: str) -> ProcessIdentity | None:
        """The recorded identity of ``service`` (``ray`` / ``mlflow``); None if this record has none."""
        pid, ticks, cmdline = (getattr(self, f"{service}_{k}") for k in ("pid", "start_ticks", "cmdline"))
        return None if ticks is None or cmdline is None else ProcessIdentity(pid, ticks, tuple(cmdline))

    def running(self, service: str) -> bool:
        """Whether the recorded leader of ``service`` still runs (same PID, start time and command line)."""
        return recorded_status(self.recorded(service), getattr(self, f"{service}_pid"))[0] == "ours"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_state(home: Path) -> StackState | None:
    """The recorded stack, or None."""
    path = home / STATE_FILE
    if not path.is_file():
        return None
    return StackState(**json.loads(path.read_text()))


def write_state(home: Path, state: StackState) -> None:
    """Write ``stack.json`` atomically: a temporary file in ``home``, fsync, ``os.replace``, fsync of ``home``.

    A reader sees the old record or the new one, never half of one, even if the machine stops.
    """
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=home)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(state), indent=2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, home / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(home, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
