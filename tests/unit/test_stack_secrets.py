"""The local stack's secrets (private files, made once) and its refusal of services it did not start."""

from __future__ import annotations

import configparser
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eoforge.errors import ServiceError
from eoforge.stack import StackPorts, free_port, up
from eoforge.stack_probe import verify_stack
from eoforge.stack_secrets import (
    MLFLOW_ADMIN,
    client_env,
    ensure_ray_token,
    mlflow_password,
    mlflow_server_env,
    shell_exports,
    write_mlflow_auth_config,
)

REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_private_files_made_once_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token_path = ensure_ray_token(home)
    token = token_path.read_text()
    ini = write_mlflow_auth_config(home)
    assert _mode(home / "secrets") == 0o700
    for path in (token_path, ini, home / "secrets" / "mlflow-password"):
        assert _mode(path) == 0o600, path
    assert len(token) >= 43  # token_urlsafe(32): 256 bits
    assert ensure_ray_token(home).read_text() == token  # the next `up` reuses it
    password = mlflow_password(home)
    write_mlflow_auth_config(home)
    assert mlflow_password(home) == password
    config = configparser.ConfigParser()
    config.read(ini)
    auth = config["mlflow"]
    assert auth["admin_username"] == MLFLOW_ADMIN and auth["admin_password"] == password
    assert auth["default_permission"] == "NO_PERMISSIONS"  # no one but the admin reads or writes
    assert auth["database_uri"] == f"sqlite:///{home / 'mlflow-auth.db'}"
    assert client_env(home)["RAY_AUTH_TOKEN_PATH"] == str(token_path)
    server = mlflow_server_env(home)
    assert server["MLFLOW_AUTH_CONFIG_PATH"] == str(ini) and len(server["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 43
    assert mlflow_server_env(home) == server  # the same key every start
    names = ["mlflow-auth.ini", "mlflow-flask-key", "mlflow-password", "ray-token"]
    assert sorted(p.name for p in (home / "secrets").iterdir()) == names
    for name in names:
        assert _mode(home / "secrets" / name) == 0o600, name


def test_a_secret_others_can_read_is_refused_not_used(tmp_path: Path) -> None:
    token_path = ensure_ray_token(tmp_path)
    os.chmod(token_path, 0o644)
    with pytest.raises(ServiceError, match=r"ray-token: mode 644 lets other users read it \(expected 600\)"):
        ensure_ray_token(tmp_path)
    os.chmod(token_path, 0o600)
    os.chmod(tmp_path / "secrets", 0o755)
    with pytest.raises(ServiceError, match=r"secrets: mode 755 lets other users read it \(expected 700\)"):
        ensure_ray_token(tmp_path)


def test_shell_exports_never_print_the_password_yet_give_it_to_the_shell(tmp_path: Path) -> None:
    write_mlflow_auth_config(tmp_path)
    text = shell_exports(tmp_path, "http://127.0.0.1:8265", "http://127.0.0.1:5000")
    password = mlflow_password(tmp_path)
    assert password not in text
    probe = 'eval "$EXPORTS"; printf "%s|%s|%s" "$RAY_AUTH_MODE" "$RAY_AUTH_TOKEN_PATH" "$MLFLOW_TRACKING_PASSWORD"'
    out = subprocess.run(
        ["bash", "-c", probe], env={"EXPORTS": text, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert out.stdout == f"token|{tmp_path / 'secrets' / 'ray-token'}|{password}", out.stderr


# --------------------------------------------------------------------------- a foreign service on a port
@pytest.fixture
def foreign_http() -> Iterator[int]:
    """A plain ``python -m http.server`` on a free port of 127.0.0.1 (what another user might run)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # until it accepts connections
            assert proc.poll() is None and time.monotonic() < deadline, "http.server did not start"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_up_refuses_a_foreign_service_on_its_mlflow_port(tmp_path: Path, foreign_http: int) -> None:
    ports = StackPorts.random()
    ports.mlflow = foreign_http
    with pytest.raises(ServiceError) as err:
        up(tmp_path / "home", ports)
    msg = str(err.value)
    assert f"port {foreign_http} (MLflow) on 127.0.0.1 is taken by an HTTP service" in msg
    assert "SimpleHTTP" in msg and "did not start" in msg
    assert not (tmp_path / "home" / "logs").exists()  # nothing was started


def test_the_cli_refuses_a_foreign_service_on_the_dashboard_port(tmp_path: Path, foreign_http: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    args = ["--dashboard-port", str(foreign_http), "--mlflow-port", str(free_port())]
    args += ["--ray-port", str(free_port()), "--client-port", str(free_port())]
    proc = subprocess.run(
        [sys.executable, "-c", "from eoforge.cli import main; main()", "up", "--home", str(tmp_path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"port {foreign_http} (Ray dashboard) on 127.0.0.1 is taken" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_recorded_url_answered_by_a_foreign_service_is_not_trusted(tmp_path: Path, foreign_http: int) -> None:
    write_mlflow_auth_config(tmp_path)
    ensure_ray_token(tmp_path)
    url = f"http://127.0.0.1:{foreign_http}"
    with pytest.raises(ServiceError, match=rf"MLflow on port {foreign_http} .* anonymous request with 404"):
        verify_stack(url, url, tmp_path)


def test_the_mlflow_server_caches_a_checked_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MLflow's login cache every request re-hashes the password (0.2 s of a core each here)."""
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(write_mlflow_auth_config(tmp_path)))
    config = read_auth_config()  # MLflow's own reader of the file
    assert config.auth_cache_ttl_seconds > 0
    assert config.admin_username == MLFLOW_ADMIN
