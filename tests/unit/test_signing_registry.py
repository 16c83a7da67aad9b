"""Signing hooks come from a closed registry: a plan or config naming anything else is refused, nothing imported."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from eoforge.catalog.assets import resolve_signer
from eoforge.config import DataConfig, parse_config
from eoforge.data.chip import read_chip
from eoforge.data.epochs import plan_windows
from eoforge.errors import CatalogError, ChipReadError, ConfigError
from eoforge.plan.build import plan_rows
from eoforge.plan.io import check_plan_signing, write_plan
from eoforge.signing import load_signer, registered_signers

from tests.support.provider_items import Scene, pc_grd_item, pc_s2_item, write_catalog
from tests.support.signing_hooks import write_test_distribution

T2023 = datetime(2023, 6, 15, 10, 15, 59, tzinfo=UTC)
NORTH = Scene(10.0, 45.0)
REGISTERED = "registered: none, planetary_computer, test_gate, test_planted, test_recording"


@pytest.fixture
def trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module on sys.path that writes a marker file when it is imported: (module name, marker path)."""
    name, marker = "eoforge_h24_trap", tmp_path / "imported.marker"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\ndef sign(href):\n    return href\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name, marker


def data_cfg(catalog: Path, **catalog_extra: object) -> DataConfig:
    return parse_config(
        {
            "kind": "data",
            "catalog": {"backend": "static", "url": str(catalog), "provider": "planetary_computer", **catalog_extra},
            "pairing": {"max_days": 3},
            "chips": {"size_px": 64},
        },
        "test",
        DataConfig,
    )


def test_registered_names_are_the_builtins_and_the_installed_entry_points() -> None:
    # the test hooks are an installed distribution's entry points (tests/conftest.py)
    assert registered_signers() == ["none", "planetary_computer", "test_gate", "test_planted", "test_recording"]
    assert load_signer("test_planted")("https://h/a.tif").endswith("sig=PLANTED-SECRET-xyz")
    assert load_signer("none")("https://h/a.tif") == "https://h/a.tif"


@pytest.mark.parametrize("name", ["os:system", "tests.support.provider_items:recording_signer", "subprocess"])
def test_a_config_naming_an_unregistered_hook_is_refused_at_load(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"catalog.signing: signing hook '{name}' is not registered .{REGISTERED}"):
        data_cfg(tmp_path / "catalog.json", signing=name)
    assert data_cfg(tmp_path / "catalog.json", signing="test_recording").catalog.signing == "test_recording"


def test_a_plan_naming_an_unregistered_hook_is_refused_and_nothing_is_imported(
    tmp_path: Path, trap: tuple[str, Path]
) -> None:
    module, marker = trap
    items = [pc_s2_item(tmp_path / "d", NORTH, T2023, "05.09"), pc_grd_item(tmp_path / "d", NORTH, T2023)]
    cfg = data_cfg(write_catalog(tmp_path, items))
    rows = plan_rows(cfg)
    # whoever can write a plan edits its access cells (and recomputes its hash: write_plan does)
    for hook in ("os:system", f"{module}:sign"):
        for row in rows:
            access = json.loads(str(row["access"]))
            access["s2"]["signing"] = hook
            row["access"] = json.dumps(access)
        plan = tmp_path / f"plan-{hook.replace(':', '_')}.parquet"
        write_plan(rows, plan, cfg)
        # the driver refuses the plan before any reading process starts ...
        with pytest.raises(CatalogError, match=f"signing hook '{hook}' is not registered .{REGISTERED}"):
            check_plan_signing(plan)
        with pytest.raises(CatalogError, match=REGISTERED):
            plan_windows(str(plan), "all", 64)
        # ... and a reading process handed such a row refuses it too
        with pytest.raises(ChipReadError, match=REGISTERED):
            resolve_signer(hook)
        with pytest.raises(ChipReadError, match=REGISTERED):
            read_chip(rows[0], "none")
    assert not marker.exists() and module not in sys.modules


def test_a_registered_hook_is_imported_only_when_chosen(tmp_path: Path, trap: tuple[str, Path]) -> None:
    module, marker = trap
    write_test_distribution(tmp_path / "dist", {"trap_hook": f"{module}:sign"}, name="eoforge_h24_trap_hooks")
    sys.path.append(str(tmp_path / "dist"))
    try:
        assert "trap_hook" in registered_signers()
        cfg = data_cfg(tmp_path / "catalog.json", signing="trap_hook")  # checked by name: not imported
        assert cfg.catalog.signing == "trap_hook" and not marker.exists()
        assert load_signer("trap_hook")("x") == "x"
        assert marker.read_text() == "imported"
    finally:
        sys.path.remove(str(tmp_path / "dist"))
    assert "trap_hook" not in registered_signers()
