"""Chip-reading throughput on the demo catalog, printed as JSON.

Measures, in one run and side by side: serial `read_chip` (all 14 S2/S1 assets + SCL per chip)
and the same chips streamed through Ray Data's `ChipBatchReader` on a local Ray instance.
Usage: python bench/chip_throughput.py [--scenes 2] [--chips 48]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from eoforge.config import DataConfig, parse_config
from eoforge.data.chip import read_chip
from eoforge.demo.catalog import write_demo_catalog
from eoforge.plan.io import build_plan, read_plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--chips", type=int, default=48)
    ap.add_argument("--ray", action="store_true", help="also stream through Ray Data (starts a local Ray)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cat = write_demo_catalog(Path(tmp) / "cat", scenes=args.scenes, size_px=256)
        cfg = parse_config(
            {"kind": "data", "catalog": {"backend": "static", "url": str(cat.catalog_json)}, "chips": {"size_px": 64}},
            "bench",
            DataConfig,
        )
        build_plan(cfg, Path(tmp) / "plan.parquet")
        frame, _ = read_plan(Path(tmp) / "plan.parquet")
        rows = frame.head(args.chips).to_dict("records")
        t0 = time.perf_counter()
        for row in rows:
            read_chip(row)
        serial_s = time.perf_counter() - t0
        out = {
            "chips": len(rows),
            "chip_px": 64,
            "serial_chips_per_s": round(len(rows) / serial_s, 2),
            "serial_ms_per_chip": round(1000 * serial_s / len(rows), 2),
        }
        if args.ray:
            import ray
            from eoforge.data.dataset import build_chip_dataset

            ray.init(address="local", num_cpus=4, include_dashboard=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            ds = build_chip_dataset(str(Path(tmp) / "plan.parquet"), split="all", read_tasks=2)
            t0 = time.perf_counter()
            n = sum(len(b["chip_id"]) for b in ds.iter_batches(batch_size=16, batch_format="numpy"))
            ray_s = time.perf_counter() - t0
            out.update({"ray_chips": n, "ray_chips_per_s": round(n / ray_s, 2)})
            ray.shutdown()
        print(json.dumps(out))


if __name__ == "__main__":
    main()
