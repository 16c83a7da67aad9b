"""eoforge up: the object store's size is checked before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from eoforge.stack import OBJECT_STORE_MB, object_store_bytes, up


def test_object_store_defaults_to_at_most_2_gib_and_takes_an_explicit_size() -> None:
    assert 0 < object_store_bytes(None) <= OBJECT_STORE_MB * 2**20
    assert object_store_bytes(512) == 512 * 2**20


def test_a_too_small_object_store_fails_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="object_store_mb: 50 MiB"):
        up(tmp_path / "home", object_store_mb=50)
    assert not (tmp_path / "home" / "logs").exists()  # no MLflow or Ray was started (nor left behind)
