"""Session fixtures: the demo catalog on disk, the local stack (Ray head + MLflow server)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.signing_hooks import install_test_hooks

REPO = Path(__file__).resolve().parents[1]
# the test stack runs without Ray token auth (loopback only), clients must agree
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
SHARED = REPO.parent / "shared"

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
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Ray head and MLflow server on free ports, stopped by PID at the end."""
    from eoforge.stack import StackPorts, down, up

    home = tmp_path_factory.mktemp("eoforge-home")
    ports = StackPorts.random()
    state = up(home, ports)
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "EOFORGE_HOME")}
    os.environ.update({"MLFLOW_TRACKING_URI": state.mlflow_url, "EOFORGE_HOME": str(home)})
    try:
        yield state
    finally:
        down(home)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
