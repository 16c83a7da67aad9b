"""A failing ``eoforge plan`` closes what it opened: one clear error line, no traceback, no file left.

Each case runs the real CLI in its own process, so what pyarrow would print at interpreter exit (a
``ParquetWriter`` closed after its sink) would show on stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.s3 import free_port

EOFORGE = Path(sys.executable).with_name("eoforge")


def plan(tmp_path: Path, catalog: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"kind: data\ncatalog:\n{catalog}")
    sets = [a for o in overrides for a in ("--set", o)]
    return subprocess.run(
        [str(EOFORGE), "plan", "--config", str(cfg), "--out", str(tmp_path / "plan.parquet"), *sets],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("case", "catalog", "overrides", "said"),
    [
        ("missing catalog", "  backend: static\n  url: /nowhere/catalog.json\n", [], "catalog.json not found"),
        (
            "unreachable API",
            "  backend: stac_api\n  url: http://127.0.0.1:{port}/stac\n",
            ["catalog.retries=0", "catalog.timeout_s=2"],
            "127.0.0.1",
        ),
        (
            "bad datetime",
            "  backend: static\n  url: /nowhere/catalog.json\n",
            ["catalog.datetime=2024-13-45"],
            "datetime",
        ),
        (
            "bbox out of range",
            "  backend: static\n  url: /nowhere/catalog.json\n",
            ["catalog.bbox=[10,50,5,40]"],
            "bbox",
        ),
    ],
)
def test_a_failed_plan_prints_one_error_and_no_traceback(
    tmp_path: Path, case: str, catalog: str, overrides: list[str], said: str
) -> None:
    done = plan(tmp_path, catalog.format(port=free_port()), *overrides)
    assert done.returncode == 2, (case, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, (case, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], (case, done.stderr)
    assert not list(tmp_path.glob("plan.parquet*")), "a failed plan left a file"
