"""Session fixtures: the demo catalog on disk, the local stack (Ray head + MLflow server)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from eoforge.stack_secrets import ensure_ray_token

from tests.support.signing_hooks import install_test_hooks

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The session's stack home, made before Ray is imported: every Ray client and cluster of the
# session (the `stack` fixture's head, tests' own ray.init(address="local"), job drivers, CLI
# subprocesses) runs with token authentication and this home's token, as `eoforge up` does.
STACK_HOME = Path(tempfile.mkdtemp(prefix="eoforge-test-home-"))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(ensure_ray_token(STACK_HOME))
os.environ.pop("RAY_AUTH_TOKEN", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(STACK_HOME, ignore_errors=True)


# the test signing hooks, registered as an installed entry point before any stack starts: the Ray
# head, its workers and CLI subprocesses inherit $PYTHONPATH (tests/support/signing_hooks.py)
HOOKS_DIR = install_test_hooks(Path(tempfile.mkdtemp(prefix="eoforge-test-hooks-")))
atexit.register(shutil.rmtree, HOOKS_DIR, True)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "real-samples").is_dir():
        pytest.fail(f"{SHARED} is missing: CI and developers keep ../shared beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory):
    from eoforge.demo.catalog import write_demo_catalog

    return write_demo_catalog(tmp_path_factory.mktemp("demo") / "catalog", scenes=2, seed=0, size_px=128)


@pytest.fixture(scope="session")
def stack() -> Iterator[object]:
    """A real Ray head (token auth) and MLflow server (basic-auth) on free ports, stopped by PID at the end.

    The session's MLflow clients log in as the stack's admin (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``).
    """
    from eoforge.stack import StackPorts, down, up
    from eoforge.stack_secrets import client_env

    home = STACK_HOME
    ports = StackPorts.random()
    state = up(home, ports)
    login = {k: v for k, v in client_env(home).items() if k.startswith("MLFLOW_")}
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "EOFORGE_HOME", *login)}
    os.environ.update({"MLFLOW_TRACKING_URI": state.mlflow_url, "EOFORGE_HOME": str(home), **login})
    try:
        yield state
    finally:
        down(home)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A one-CPU Ray started in this process for the module's tests (no stack, no dashboard)."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for one test module (a process of its own, stopped by PID); its URL."""
    from tests.support.s3 import moto_server

    yield from moto_server(tmp_path_factory.mktemp("moto") / "server.log")
