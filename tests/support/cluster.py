"""A real two-node Ray cluster on 127.0.0.1, with its own MLflow server, for the fault tests.

:class:`LocalCluster` starts, as a user's machines would run them:

- the head and MLflow with :func:`eoforge.stack.up` (token authentication, MLflow basic-auth),
  in a home of its own, with the session's Ray token (every client of the test session talks to
  every cluster it starts with one token: ``tests/conftest.py``);
- a second node with ``ray start --address <head> --block``, its own CPUs and a custom resource
  (:data:`NODE_RESOURCE`) that jobs use to put work on it.

Faults are real: :meth:`LocalCluster.kill_node` SIGKILLs the second node's ``ray start``, raylet,
agents and workers by PID (a host that vanished); :meth:`LocalCluster.stop_mlflow` stops the
MLflow server and :meth:`LocalCluster.start_mlflow` starts it again on its port, database and
artifacts. Waits poll observable state (Ray's state API, HTTP health), never sleep as
synchronisation. :meth:`LocalCluster.close` stops everything it started, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

#: The second node's custom resource: a job puts work there with ``scaling.resources_per_worker``.
NODE_RESOURCE = "eoforge_node2"
#: Units of :data:`NODE_RESOURCE` the second node advertises.
NODE_RESOURCE_UNITS = 4


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: each process's parent)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out += kids
        todo += kids
    return out


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy (returned); AssertionError naming ``what`` past the time."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(every_s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: read its state
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


#: Where `ray start --head` records this machine's current cluster (``ray.init()`` without an address reads it).
CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


class LocalCluster:
    """A head (+ MLflow) and a second node on 127.0.0.1; see the module docstring.

    Attributes:
        home: the stack's home (state, logs, MLflow's database and artifacts, secrets).
        state: what :func:`eoforge.stack.up` recorded (addresses, PIDs).
        node_proc: the second node's ``ray start --block`` process, while it runs.
    """

    def __init__(self, head_cpus: int = 2, node_cpus: int = 2) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="eoforge-cluster-"))
        self.head_cpus, self.node_cpus = head_cpus, node_cpus
        self.state: Any = None
        self.node_proc: subprocess.Popen[bytes] | None = None
        self.mlflow_proc: subprocess.Popen[bytes] | None = None  # a restarted MLflow (up's is in state)
        self._node_ports: dict[str, int] = {}

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """Start the head and MLflow, then the second node; returns self once both nodes are ALIVE."""
        # `ray start --head` records itself as this machine's current cluster, which a later
        # `ray.init()` without an address connects to; close() puts the previous record back
        self._current = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
        from eoforge.stack import StackPorts, up
        from eoforge.stack_secrets import RAY_TOKEN_FILE, secrets_dir

        # the session's Ray token, so that this process's Ray clients reach this cluster too
        token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text()
        fd = os.open(secrets_dir(self.home, create=True) / RAY_TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token)
        self.state = up(self.home, StackPorts.random(), num_cpus=self.head_cpus, object_store_mb=400)
        self.start_node()
        return self

    def close(self) -> None:
        """Stop the second node, a restarted MLflow and the stack (by PID); remove the home."""
        previous = getattr(self, "_current", None)
        if previous is not None:
            CURRENT_CLUSTER.write_text(previous)
        elif hasattr(self, "_current"):
            CURRENT_CLUSTER.unlink(missing_ok=True)
        from eoforge.stack import down

        self.kill_node()
        if self.mlflow_proc is not None:
            _stop_group(self.mlflow_proc)
        if self.state is not None:
            down(self.home)
        shutil.rmtree(self.home, ignore_errors=True)

    def client_env(self) -> dict[str, str]:
        """What a client of this cluster needs in its environment (Ray token, MLflow URI and login)."""
        from eoforge.stack_secrets import client_env

        return {**client_env(self.home), "MLFLOW_TRACKING_URI": self.state.mlflow_url, "EOFORGE_HOME": str(self.home)}

    # -- the second node -------------------------------------------------------------------------
    def start_node(self, timeout_s: float = 240) -> str:
        """Start the second node (``ray start --address``); returns its node id once it is ALIVE."""
        from eoforge.ray_node import with_node_env
        from eoforge.stack_state import free_port

        assert self.node_proc is None, "the second node runs already"
        if not self._node_ports:  # the same ports on every start of this node, none of the head's
            names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port")
            self._node_ports = {k: free_port() for k in (*names, "runtime-env-agent-port", "node-manager-port")}
        env = {**os.environ, **self.client_env(), "RAY_USAGE_STATS_ENABLED": "0"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            {
                "RAY_worker_register_timeout_seconds": "300",
                "RAY_prestart_worker_first_driver": "0",
                "RAY_enable_worker_prestart": "0",
            }
        )
        with_node_env(env)
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--address",
            self.state.ray_address,
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(self.node_cpus),
            "--num-gpus",
            "0",
            "--resources",
            json.dumps({NODE_RESOURCE: NODE_RESOURCE_UNITS}),
            "--object-store-memory",
            str(300 * 2**20),
            "--disable-usage-stats",
            # a disk of its own, as a cluster node has: on the head's temp dir, each start of this node
            # would unpack the job's working_dir again over the head's copy, the job driver's cwd
            "--temp-dir",
            str(self.home / "node2-tmp"),
            *(a for k, v in self._node_ports.items() for a in (f"--{k}", str(v))),
        ]
        log = self.home / "logs" / "node2.log"
        with open(log, "ab") as out:
            self.node_proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
            )

        def alive_id() -> str | None:
            assert self.node_proc is not None and self.node_proc.poll() is None, (
                f"the second node exited while starting; see {log}:\n{log.read_text()[-3000:]}"
            )
            return next((n["node_id"] for n in self.nodes() if _is_node2(n) and n["state"] == "ALIVE"), None)

        return str(wait_for("the second node to join the cluster", alive_id, timeout_s))

    def kill_node(self) -> list[int]:
        """SIGKILL the second node's processes (``ray start``, raylet, agents, workers), by PID; returns them.

        All at once, as when a host vanishes: nothing on the node gets to say goodbye.
        """
        proc, self.node_proc = self.node_proc, None
        if proc is None:
            return []
        pids = [proc.pid, *descendants(proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        wait_for("the second node's processes to end", lambda: not any(_alive(p) for p in pids), 30, 0.1)
        return pids

    def wait_node_dead(self, timeout_s: float = 120) -> None:
        """Wait until the head's GCS sees the second node DEAD (no ALIVE node with its resource)."""
        wait_for(
            "the head to see the second node dead",
            lambda: not any(_is_node2(n) and n["state"] == "ALIVE" for n in self.nodes()),
            timeout_s,
        )

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes as the state API lists them (``node_id``, ``state``, ``resources_total``)."""
        from eoforge.stack_probe import ray_auth_headers

        url = f"{self.state.ray_dashboard_url}/api/v0/nodes?limit=100&detail=true"
        try:
            resp = requests.get(url, headers=ray_auth_headers(self.home), timeout=10)
            return list(resp.json()["data"]["result"]["result"])
        except (requests.RequestException, ValueError, KeyError):
            return []

    def node_pids(self) -> list[int]:
        """PIDs of the second node's processes (its ``ray start`` and every descendant)."""
        return [] if self.node_proc is None else [self.node_proc.pid, *descendants(self.node_proc.pid)]

    # -- MLflow ----------------------------------------------------------------------------------
    def stop_mlflow(self) -> None:
        """Kill the MLflow server (SIGKILL to its process group, by PID: a crash), and wait until its port refuses."""
        pgid = self.mlflow_proc.pid if self.mlflow_proc is not None else self.state.mlflow_pid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.mlflow_proc is not None:
            self.mlflow_proc.wait(timeout=30)
            self.mlflow_proc = None

        def refused() -> bool:
            try:
                requests.get(f"{self.state.mlflow_url}/health", timeout=2)
            except requests.ConnectionError:
                return True
            return False

        wait_for("MLflow to stop answering", refused, 30, 0.2)

    def start_mlflow(self, timeout_s: float = 180) -> None:
        """Start MLflow again with ``up``'s command line (port, database, artifacts, auth); wait for /health."""
        from eoforge.stack_secrets import mlflow_server_env

        assert self.mlflow_proc is None, "MLflow runs already"
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_AUTH_ADMIN_USERNAME", "RAY_AUTH_TOKEN")}
        env.update(mlflow_server_env(self.home))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        with open(self.home / "logs" / "mlflow.log", "ab") as out:
            self.mlflow_proc = subprocess.Popen(
                list(self.state.mlflow_cmdline),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )

        def healthy() -> bool:
            assert self.mlflow_proc is not None and self.mlflow_proc.poll() is None, "MLflow exited while starting"
            try:
                return requests.get(f"{self.state.mlflow_url}/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for("MLflow to answer again", healthy, timeout_s)


def _is_node2(node: dict[str, Any]) -> bool:
    return NODE_RESOURCE in (node.get("resources_total") or {})


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL after 20 s; reap it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
