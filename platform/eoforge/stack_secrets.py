"""The local stack's credentials, kept in ``$EOFORGE_HOME/secrets/`` (folder 0700, files 0600).

``eoforge up`` turns authentication on for both services it starts:

- Ray: token authentication (``RAY_AUTH_MODE=token``). The token is ``secrets/ray-token``; every
  Ray process of the stack, and every client (``ray job submit``, ``JobSubmissionClient``,
  ``ray.init``), finds it through ``RAY_AUTH_TOKEN_PATH`` (Ray sends it as ``Authorization:
  Bearer <token>`` to the dashboard and as gRPC metadata to the GCS).
- MLflow: the ``basic-auth`` app. ``secrets/mlflow-password`` is the password of the admin user
  :data:`MLFLOW_ADMIN` (created by MLflow on first start from ``secrets/mlflow-auth.ini``, which
  ``MLFLOW_AUTH_CONFIG_PATH`` names); clients send ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD``. ``default_permission = NO_PERMISSIONS``: no other user may read
  or write anything, and a request without credentials is refused (401).

Secrets are made once with :func:`secrets.token_urlsafe` and reused by every later ``up``; a
secret file that others may read is refused (never silently loosened or tightened), so a leak is
noticed. Nothing here logs a secret: functions return paths or mappings, and
:func:`shell_exports` prints the password as ``$(cat <file>)``, not its value.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
from pathlib import Path

from eoforge.errors import ServiceError

SECRETS_DIR = "secrets"
RAY_TOKEN_FILE = "ray-token"
MLFLOW_PASSWORD_FILE = "mlflow-password"
MLFLOW_FLASK_KEY_FILE = "mlflow-flask-key"
MLFLOW_AUTH_INI = "mlflow-auth.ini"
#: How long the MLflow server trusts a checked login (MLflow's ``auth_cache_ttl_seconds``): the
#: password is a random secret of the stack, so what the hash check protects is its file, not a guess.
MLFLOW_AUTH_CACHE_TTL_S = 300
MLFLOW_AUTH_DB = "mlflow-auth.db"
#: the MLflow admin user eoforge creates and its clients log in as
MLFLOW_ADMIN = "eoforge-admin"


def secrets_dir(home: Path, create: bool = False) -> Path:
    """``home/secrets``, made with mode 0700 when ``create``; an existing one open to others is refused."""
    path = home.absolute() / SECRETS_DIR
    if create and not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # whatever the umask
    if path.exists():
        _check_private(path, 0o700)
    return path


def _check_private(path: Path, mode: int) -> None:
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ServiceError(f"{path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()}); refusing to use it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ServiceError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):o} lets other users read it (expected {mode:o}); "
            f"check who read it, then `chmod {mode:o} {path}` (or delete the stack's secrets/ folder to make new ones)"
        )


def _write_private(path: Path, text: str, replace: bool) -> None:
    """Write ``text`` into ``path`` with mode 0600 from the start (no window where others may read it)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another `up` made it first: theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _secret(home: Path, name: str, create: bool) -> str:
    """The secret in ``secrets/<name>``, made (``token_urlsafe(32)``: 256 bits) when missing and ``create``."""
    path = secrets_dir(home, create=create) / name
    if not path.exists():
        if not create:
            raise ServiceError(f"{path} is missing: start the local stack with `eoforge up --home {home}`")
        _write_private(path, secrets.token_urlsafe(32), replace=False)
    _check_private(path, 0o600)
    value = path.read_text().strip()
    if not value:
        raise ServiceError(f"{path} is empty; delete the stack's secrets/ folder and run `eoforge up` again")
    return value


def ray_token_path(home: Path) -> Path:
    """Where the stack's Ray token lives (it may not exist yet)."""
    return home.absolute() / SECRETS_DIR / RAY_TOKEN_FILE


def ensure_ray_token(home: Path) -> Path:
    """The Ray token's file, made on first use; returns its path (the token is never returned)."""
    _secret(home, RAY_TOKEN_FILE, create=True)
    return ray_token_path(home)


def ray_token(home: Path) -> str:
    """The stack's Ray token (for an ``Authorization: Bearer`` header); it must exist."""
    return _secret(home, RAY_TOKEN_FILE, create=False)


def mlflow_password(home: Path, create: bool = False) -> str:
    """The MLflow admin password (made on first use when ``create``)."""
    return _secret(home, MLFLOW_PASSWORD_FILE, create=create)


def mlflow_server_env(home: Path) -> dict[str, str]:
    """What MLflow's basic-auth server needs in its environment (and nothing else does).

    ``MLFLOW_AUTH_CONFIG_PATH`` (written here) and ``MLFLOW_FLASK_SERVER_SECRET_KEY``, the key of
    the app's CSRF protection (made once in ``secrets/mlflow-flask-key``).
    """
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(write_mlflow_auth_config(home)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(home, MLFLOW_FLASK_KEY_FILE, create=True),
    }


def write_mlflow_auth_config(home: Path) -> Path:
    """``secrets/mlflow-auth.ini`` for ``MLFLOW_AUTH_CONFIG_PATH`` (0600); returns its path.

    The admin user is created from it when the auth database is new; later starts reuse the user
    (and its password) already in ``mlflow-auth.db``.
    """
    password = mlflow_password(home, create=True)
    home = home.absolute()
    text = "\n".join(
        [
            "[mlflow]",
            "default_permission = NO_PERMISSIONS",
            f"database_uri = sqlite:///{home / MLFLOW_AUTH_DB}",
            f"admin_username = {MLFLOW_ADMIN}",
            f"admin_password = {password}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "grant_default_workspace_access = false",
            # every request carries the password; without the cache each one costs a password-hash
            # check (~0.2 s of a core here), which made a training loop's metric sends eat a core
            f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_TTL_S}",
            "",
        ]
    )
    path = secrets_dir(home) / MLFLOW_AUTH_INI
    _write_private(path, text, replace=True)
    return path


def client_env(home: Path) -> dict[str, str]:
    """Environment variables a client of the stack needs: Ray token mode + token path, MLflow login.

    Contains the MLflow password: put it into a child's environment, never into a log or a file.
    """
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ray_token_path(home)),
        "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_TRACKING_PASSWORD": mlflow_password(home),
    }


def shell_exports(home: Path, ray_address: str, mlflow_url: str) -> str:
    """``export`` lines for ``eval "$(eoforge env)"``; the password is read from its file by the shell."""
    home = home.absolute()
    password_file = secrets_dir(home) / MLFLOW_PASSWORD_FILE
    mlflow_password(home)  # it exists and is private
    lines = {
        "EOFORGE_HOME": shlex.quote(str(home)),
        "RAY_ADDRESS": shlex.quote(ray_address),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": shlex.quote(str(ray_token_path(home))),
        "MLFLOW_TRACKING_URI": shlex.quote(mlflow_url),
        "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_TRACKING_PASSWORD": f'"$(cat {shlex.quote(str(password_file))})"',
    }
    return "\n".join(f"export {k}={v}" for k, v in lines.items())
