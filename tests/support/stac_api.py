"""A real STAC API for tests: PostgreSQL + PostGIS + pgstac, served by stac-fastapi-pgstac.

Started on 127.0.0.1 on free ports, loaded with ndjson through pypgstac, stopped by PID.
PostgreSQL refuses to run as root, so initdb / pg_ctl run as the ``postgres`` user when we
are root (see shared/reference/stac-server-recipe.md).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from eoforge.stack import free_port


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if not found:
        raise RuntimeError(f"PostgreSQL binary {name} not found: install postgresql (make test does it as root)")
    return found


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class StacApi:
    """A running STAC API; ``url`` is its root."""

    url: str
    dsn: str
    datadir: Path
    uvicorn: subprocess.Popen[bytes]
    pg_ctl: str

    def stop(self) -> None:
        """Stop uvicorn (by PID) and PostgreSQL (pg_ctl stop on its data dir)."""
        if self.uvicorn.poll() is None:
            self.uvicorn.send_signal(signal.SIGTERM)
            try:
                self.uvicorn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.uvicorn.kill()
        subprocess.run(
            _as_pg_user([self.pg_ctl, "-D", str(self.datadir), "-m", "fast", "stop"]), check=False, capture_output=True
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_stac_api(collections_ndjson: Path, items_ndjson: Path) -> StacApi:
    """Start PostgreSQL + pgstac + stac-fastapi-pgstac and load the given ndjson files."""
    root = Path(tempfile.mkdtemp(prefix="eoforge-pg-"))
    os.chmod(root, 0o777)
    datadir, sockdir = root / "data", root / "sock"
    for d in (datadir, sockdir):
        d.mkdir()
        if os.geteuid() == 0:
            shutil.chown(d, "postgres", "postgres")
    port = free_port()
    pg_ctl = _pg_bin("pg_ctl")
    subprocess.run(
        _as_pg_user([_pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {sockdir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    subprocess.run(
        _as_pg_user([pg_ctl, "-D", str(datadir), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    base = f"postgresql://postgres@127.0.0.1:{port}"
    subprocess.run(
        [_pg_bin("psql"), f"{base}/postgres", "-qc", "CREATE DATABASE stac"], check=True, capture_output=True
    )
    dsn = f"{base}/stac"
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "pypgstac"), "migrate", "--dsn", dsn], check=True, capture_output=True)
    for kind, path in (("collections", collections_ndjson), ("items", items_ndjson)):
        subprocess.run(
            [str(bindir / "pypgstac"), "load", kind, str(path), "--dsn", dsn, "--method", "upsert"],
            check=True,
            capture_output=True,
        )
    api_port = free_port()
    env = dict(
        os.environ,
        PGHOST="127.0.0.1",
        PGPORT=str(port),
        PGUSER="postgres",
        PGPASSWORD="unused",
        PGDATABASE="stac",
        POSTGRES_HOST_READER="127.0.0.1",
        POSTGRES_HOST_WRITER="127.0.0.1",
        POSTGRES_PORT=str(port),
        POSTGRES_USER="postgres",
        POSTGRES_PASS="unused",
        POSTGRES_DBNAME="stac",
    )
    proc = subprocess.Popen(
        [
            str(bindir / "uvicorn"),
            "stac_fastapi.pgstac.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(api_port),
        ],
        env=env,
        stdout=open(root / "uvicorn.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{api_port}"
    api = StacApi(url, dsn, datadir, proc, pg_ctl)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            api.stop()
            raise RuntimeError(f"stac-fastapi-pgstac exited: {(root / 'uvicorn.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/_mgmt/ping", timeout=2).ok:
                return api
        except requests.RequestException:
            pass
        time.sleep(0.3)
    api.stop()
    raise RuntimeError("stac-fastapi-pgstac did not answer /_mgmt/ping within 60 s")
