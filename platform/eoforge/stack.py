"""The local stack: a Ray head and an MLflow tracking server on 127.0.0.1.

``eoforge up`` starts both as process groups of their own and records them in
``$EOFORGE_HOME/stack.json`` (written atomically: a temporary file in the same folder, fsync,
``os.replace``), each with its start time and command line (:mod:`eoforge.processes`);
``eoforge down`` stops a recorded group (SIGTERM, SIGKILL after a grace period) only while its
leader's start time and command line still match, and reports a PID that now belongs to another
process instead of touching it; ``eoforge status`` reports both. Ray jobs started on
this head inherit ``EOFORGE_HOME``, ``MLFLOW_TRACKING_URI``, the MLflow login and the virtualenv's
``PATH`` (the rest of the environment is the user's who ran ``up``: only holders of the token may
submit jobs).

Authentication (:mod:`eoforge.stack_secrets`): the Ray head runs with token authentication and
MLflow with its basic-auth app, their secrets in ``$EOFORGE_HOME/secrets/``. ``up`` refuses ports
that something else listens on, and reuses a recorded stack only after it proved it holds those
secrets (:mod:`eoforge.stack_probe`).

MLflow: SQLite backend (``mlflow.db``) and a local artifact store (``mlartifacts/``),
served through the tracking server (``--serve-artifacts``), so clients need only HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import requests

from eoforge.errors import ServiceError
from eoforge.processes import identity_of, recorded_status, stop_signals_raise
from eoforge.progress import say
from eoforge.ray_node import with_node_env
from eoforge.stack_probe import ray_auth_headers, refuse_taken_ports, verify_stack
from eoforge.stack_secrets import MLFLOW_ADMIN, ensure_ray_token, mlflow_password, mlflow_server_env
from eoforge.stack_state import (  # noqa: F401  (re-exported: eoforge.stack is the public module)
    STATE_FILE,
    StackPorts,
    StackState,
    free_port,
    read_state,
    write_state,
)


def _wait_http(
    url: str,
    what: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 180,
    ready: Callable[[requests.Response], bool] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``url`` until it answers 200 and ``ready`` (if given) holds, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} while starting; see {log}")
        try:
            resp = requests.get(url, timeout=2, headers=headers)
            if resp.status_code == 200 and (ready is None or ready(resp)):
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServiceError(f"{what} was not ready at {url} within {timeout_s:.0f}s; see {log}")


def _a_node_is_alive(resp: requests.Response) -> bool:
    """Whether a Ray state API ``/api/v0/nodes`` answer lists an ALIVE node (the head's raylet)."""
    try:
        nodes = resp.json()["data"]["result"]["result"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(isinstance(n, dict) and n.get("state") == "ALIVE" for n in nodes)


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
        )


#: The local head's object store, MiB, at most (Ray's default is 30 % of the machine's memory).
OBJECT_STORE_MB = 2048


def object_store_bytes(object_store_mb: int | None) -> int:
    """The head's object store in bytes: ``object_store_mb``, else min(:data:`OBJECT_STORE_MB`, 30 % of RAM).

    A bounded store also bounds the object-store pages a consumer of chip streams touches, which
    its RSS counts (``bench/stream_memory.py``).
    """
    if object_store_mb is not None:
        if object_store_mb < 100:
            raise ValueError(f"object_store_mb: {object_store_mb} MiB is too small for Ray (at least 100)")
        return object_store_mb * 2**20
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(OBJECT_STORE_MB * 2**20, 0.3 * ram))


def up(
    home: Path, ports: StackPorts | None = None, num_cpus: int | None = None, object_store_mb: int | None = None
) -> StackState:
    """Start MLflow, then the Ray head; return the recorded state (idempotent when running).

    A SIGTERM or SIGHUP while they start stops whatever was started (nothing is left running
    unrecorded) and exits.

    Args:
        home: state, logs, MLflow's database and artifacts.
        ports: the services' ports (default: the usual ones).
        num_cpus: logical CPUs the head advertises (default max(4, cores)).
        object_store_mb: the head's object store, MiB (see :func:`object_store_bytes`).
    """
    with stop_signals_raise():
        return _up(home, ports, num_cpus, object_store_mb)


def _up(home: Path, ports: StackPorts | None, num_cpus: int | None, object_store_mb: int | None) -> StackState:
    home = home.absolute()
    store_bytes = object_store_bytes(object_store_mb)  # checked before anything starts
    # secrets first: one that others can read stops `up` before it touches a running stack
    token_path = ensure_ray_token(home)
    mlflow_secrets = mlflow_server_env(home)
    current = read_state(home)
    if current and current.running("ray") and current.running("mlflow"):
        try:  # our processes, by PID; and do they hold this home's secrets?
            verify_stack(current.mlflow_url, current.ray_dashboard_url, home)
            return current
        except ServiceError as exc:  # e.g. started by an eoforge without authentication: restart it
            say(f"restarting the recorded stack: {exc}")
    if current:
        down(home)
    ports = ports or StackPorts()
    refuse_taken_ports(
        {
            "MLflow": ports.mlflow,
            "Ray GCS": ports.ray_gcs,
            "Ray dashboard": ports.ray_dashboard,
            "Ray client server": ports.ray_client,
            **{f"Ray {k}": v for k, v in ports.extra.items()},
        }
    )
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # only our secrets count: a token or admin password in the caller's environment would win over them
    for key in ("RAY_AUTH_TOKEN", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", *mlflow_secrets):
        env.pop(key, None)
    mlflow_env = {**env, **mlflow_secrets}
    mlflow_url = f"http://127.0.0.1:{ports.mlflow}"
    mlflow_cmd = [
        _bin("mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(ports.mlflow),
        "--workers",
        "1",
    ]
    mlflow_proc = _start(mlflow_cmd, logs / "mlflow.log", mlflow_env)
    try:
        _wait_http(f"{mlflow_url}/health", "MLflow server", mlflow_proc, logs / "mlflow.log")
    except BaseException:  # a failed start (or ^C) leaves no MLflow behind
        _kill_group(mlflow_proc.pid)
        raise
    # Small machines: 2 Ray Train workers (1 CPU each) plus 2 chip readers (0.5 CPU each) must
    # fit at once, so the head advertises at least 4 logical CPUs (CPUs are scheduling tokens).
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    env.update(
        {
            "EOFORGE_HOME": str(home),
            "MLFLOW_TRACKING_URI": mlflow_url,
            # jobs, Train workers and trials log to MLflow as the stack's admin (never logged)
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": mlflow_password(home),
            "RAY_USAGE_STATS_ENABLED": "0",
            # every request to the GCS, raylets, dashboard and job API must carry the token; the
            # job drivers inherit both and so reach the head with it
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            # a loaded 2-core machine can take over a minute to start a worker that imports torch
            "RAY_worker_register_timeout_seconds": env.get("RAY_worker_register_timeout_seconds", "300"),
            # no idle workers started ahead of demand: each costs a Python start-up on few cores
            "RAY_prestart_worker_first_driver": env.get("RAY_prestart_worker_first_driver", "0"),
            "RAY_enable_worker_prestart": env.get("RAY_enable_worker_prestart", "0"),
        }
    )
    with_node_env(env)  # eoforge's Ray node settings (eoforge.ray_node): dead blocks freed at once
    extra = ports.extra
    ray_cmd = [
        _bin("ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(ports.ray_gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(ports.ray_dashboard),
        "--ray-client-server-port",
        str(ports.ray_client),
        "--num-cpus",
        str(cpus),
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(store_bytes),
        "--disable-usage-stats",
    ]
    for flag in (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
    ):
        if flag in extra:
            ray_cmd += [f"--{flag}", str(extra[flag])]
    try:
        ray_proc = _start(ray_cmd, logs / "ray.log", env)
    except BaseException:
        _kill_group(mlflow_proc.pid)
        raise
    dashboard = f"http://127.0.0.1:{ports.ray_dashboard}"
    try:
        headers = ray_auth_headers(home)
        _wait_http(f"{dashboard}/api/version", "Ray head", ray_proc, logs / "ray.log", headers=headers)
        # the dashboard can answer before the head's raylet has started: wait for the node itself
        _wait_http(
            f"{dashboard}/api/v0/nodes",
            "Ray head node",
            ray_proc,
            logs / "ray.log",
            ready=_a_node_is_alive,
            headers=headers,
        )
        verify_stack(mlflow_url, dashboard, home)  # both refuse strangers and accept us
    except BaseException:  # neither process is left behind
        _kill_group(ray_proc.pid, STOP_GRACE_S["ray"])
        _kill_group(mlflow_proc.pid)
        raise
    ray_id, mlflow_id = identity_of(ray_proc.pid), identity_of(mlflow_proc.pid)
    state = StackState(
        str(home),
        ray_proc.pid,
        mlflow_proc.pid,
        f"127.0.0.1:{ports.ray_gcs}",
        dashboard,
        mlflow_url,
        cpus,
        ray_id.start_ticks if ray_id else None,
        list(ray_id.cmdline) if ray_id else None,
        mlflow_id.start_ticks if mlflow_id else None,
        list(mlflow_id.cmdline) if mlflow_id else None,
    )
    write_state(home, state)
    return state


#: Seconds a stopped service's process group gets between SIGTERM and SIGKILL. Ray's head (``ray start
#: --block``, its GCS server and autoscaler monitor) was measured still running 30 s after SIGTERM (2-core
#: machine, 2026-12-07), so it would always use the whole grace; it keeps nothing on disk that SIGKILL
#: could corrupt (its GCS is in memory), so it gets a short one. MLflow's group left in about 6 s.
STOP_GRACE_S = {"ray": 5.0, "mlflow": 20.0}


def _kill_group(pid: int, grace_s: float = 20) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap our own child if it is one
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def down(home: Path) -> dict[str, str] | None:
    """Stop what ``up`` recorded, by process group, where it is still what was recorded.

    A recorded leader is stopped (with its group) only if its start time and command line match
    the record; a PID that now belongs to another process is left alone and reported. The record
    is removed either way (the recorded processes are gone or stopped).

    Returns:
        {service: what was done}, for ``ray`` and ``mlflow``; None when nothing was recorded.
    """
    home = home.absolute()
    state = read_state(home)
    if state is None:
        return None
    report = {}
    for service in ("ray", "mlflow"):
        pid = getattr(state, f"{service}_pid")
        verdict, why = recorded_status(state.recorded(service), pid)
        if verdict in ("ours", "group"):
            _kill_group(pid, STOP_GRACE_S[service])
            report[service] = f"stopped {why}"
        else:
            report[service] = why
    (home / STATE_FILE).unlink(missing_ok=True)
    return report


def status(home: Path) -> dict[str, object]:
    """Liveness of each service (process alive and HTTP answering)."""
    state = read_state(home.absolute())
    if state is None:
        return {"running": False, "home": str(home.absolute())}

    def answers(url: str, headers: dict[str, str] | None = None) -> bool:
        try:
            return requests.get(url, timeout=3, headers=headers).status_code == 200
        except requests.RequestException:
            return False

    try:
        headers = ray_auth_headers(home)
    except ServiceError:  # no token: the dashboard cannot be asked
        headers = None
    ray_ok = state.running("ray") and headers is not None and answers(f"{state.ray_dashboard_url}/api/version", headers)
    mlflow_ok = state.running("mlflow") and answers(f"{state.mlflow_url}/health")
    return {"running": ray_ok and mlflow_ok, "ray": ray_ok, "mlflow": mlflow_ok, **asdict(state)}
