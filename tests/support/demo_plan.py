"""A chip plan of the demo catalog, built by eoforge's planner: the fixture data of the stream tests."""

from __future__ import annotations

from pathlib import Path

from eoforge.config import DataConfig, parse_config
from eoforge.demo.catalog import write_demo_catalog
from eoforge.plan.io import build_plan


def demo_plan(tmp: Path, chip_px: int = 64, scenes: int = 2, size_px: int = 256) -> Path:
    """Write a demo catalog under ``tmp/cat`` and plan every chip of it: ``tmp/plan.parquet``.

    Args:
        tmp: an empty folder.
        chip_px: chip side, px at 10 m.
        scenes, size_px: demo scenes (side in px at 10 m), as :func:`write_demo_catalog` takes them.
    """
    cat = write_demo_catalog(tmp / "cat", scenes=scenes, size_px=size_px)
    cfg = parse_config(
        {"kind": "data", "catalog": {"backend": "static", "url": str(cat.catalog_json)}, "chips": {"size_px": chip_px}},
        "test",
        DataConfig,
    )
    build_plan(cfg, tmp / "plan.parquet")
    return tmp / "plan.parquet"
