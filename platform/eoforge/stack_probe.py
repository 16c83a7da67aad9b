"""Checks that what answers on the local stack's ports is the stack ``eoforge up`` started.

Before starting anything, ``eoforge up`` refuses a port that something already listens on, naming
the port and what answered there. A stack recorded in ``stack.json`` counts as running only if its
services prove they hold this ``$EOFORGE_HOME``'s secrets (:mod:`eoforge.stack_secrets`):

- MLflow: a request without credentials is refused (401: the basic-auth app is on) and the same
  request as the stack's admin user succeeds;
- Ray: the job API refuses a request without the token (401) and accepts ours (200).

A service that answers otherwise is reported by :func:`verify_stack` (never trusted).
"""

from __future__ import annotations

import socket
from pathlib import Path

import requests

from eoforge.errors import ServiceError
from eoforge.stack_secrets import MLFLOW_ADMIN, mlflow_password, ray_token

#: an MLflow route that needs a login under basic-auth (and only exists there)
MLFLOW_WHOAMI = "/api/2.0/mlflow/users/get"
#: a Ray dashboard route behind its token check (not on its public list)
RAY_AUTHED = "/api/version"


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def describe_listener(port: int, host: str = "127.0.0.1") -> str:
    """What answers an HTTP GET / on ``host:port``, in a few words (status, Server header), or that it is not HTTP."""
    try:
        resp = requests.get(f"http://{host}:{port}/", timeout=3)
    except requests.RequestException as exc:
        return f"a non-HTTP service or one that did not answer HTTP ({type(exc).__name__})"
    server = resp.headers.get("Server", "no Server header")
    return f"an HTTP service answering GET / with {resp.status_code} ({server})"


def refuse_taken_ports(ports: dict[str, int]) -> None:
    """Raise :class:`ServiceError` naming the first of ``ports`` ({what: port}) that something listens on."""
    for what, port in ports.items():
        if listening(port):
            raise ServiceError(
                f"eoforge up: port {port} ({what}) on 127.0.0.1 is taken by {describe_listener(port)}, "
                "which this stack did not start; stop it, or choose other ports (`eoforge up --help`, --random-ports)"
            )


def ray_auth_headers(home: Path) -> dict[str, str]:
    """The ``Authorization`` header that Ray's dashboard and job API accept from this stack's clients."""
    return {"Authorization": f"Bearer {ray_token(home)}"}


def _status(url: str, **kwargs: object) -> int | None:
    try:
        return requests.get(url, timeout=5, **kwargs).status_code  # type: ignore[arg-type]
    except requests.RequestException:
        return None


def mlflow_is_ours(url: str, home: Path) -> str | None:
    """None when MLflow at ``url`` refuses anonymous calls and accepts this stack's admin; else why not."""
    probe = f"{url.rstrip('/')}{MLFLOW_WHOAMI}?username={MLFLOW_ADMIN}"
    anonymous = _status(probe)
    if anonymous != 401:
        return f"answered an anonymous request with {anonymous} (expected 401: basic-auth is not on)"
    ours = _status(probe, auth=(MLFLOW_ADMIN, mlflow_password(home)))
    if ours != 200:
        return f"refused this stack's admin login ({ours}): it was started with other credentials"
    return None


def ray_is_ours(dashboard_url: str, home: Path) -> str | None:
    """None when the Ray dashboard at ``dashboard_url`` refuses no token and accepts ours; else why not."""
    probe = f"{dashboard_url.rstrip('/')}{RAY_AUTHED}"
    anonymous = _status(probe)
    if anonymous != 401:
        return f"answered a request without a token with {anonymous} (expected 401: token auth is not on)"
    ours = _status(probe, headers=ray_auth_headers(home))
    if ours != 200:
        return f"refused this stack's token ({ours}): it was started with another token"
    return None


def verify_stack(mlflow_url: str, dashboard_url: str, home: Path) -> None:
    """Raise :class:`ServiceError` unless both services at these URLs are this stack's (see module docstring)."""
    for what, url, why in (
        ("MLflow", mlflow_url, mlflow_is_ours(mlflow_url, home)),
        ("Ray dashboard", dashboard_url, ray_is_ours(dashboard_url, home)),
    ):
        if why is not None:
            port = url.rsplit(":", 1)[-1].rstrip("/")
            raise ServiceError(
                f"eoforge up: {what} on port {port} ({url}) is not the stack recorded in {home}: it {why}; "
                "refusing to use it (stop that service, or `eoforge down` and start again)"
            )
