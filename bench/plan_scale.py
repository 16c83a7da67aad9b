"""Planner at scale: a synthetic catalog of >= N chips in pgstac, planned through the STAC API.

    python bench/plan_scale.py                 # 1,000,000 chips (the goal: <= 600 s, <= 2048 MB)
    python bench/plan_scale.py --chips 50000   # a smaller run

Steps: write S2 + S1 items with full ``proj:`` metadata and asset hrefs (no pixel files:
``tests/support/plan_items.py``; 10980 x 10980 px S2 tiles, 64 px chips, 29,241 chips per
item, up to 3 dates per tile), start PostgreSQL + pgstac + stac-fastapi-pgstac
(``tests/support/stac_api.py``) and load them, then build the plan with
``eoforge.plan.io.build_plan`` in a child process (so its peak RSS is the planner's, not the
server's or this script's), verify the written plan's hash (streamed), and stop the server by
PID, also on failure. The last line printed is one JSON object: chips, items, wall_s (the
plan: search + chips + write), search_s, chips_s, write_s, verify_s, peak_rss_mb (planner
process, ``ru_maxrss``), chips_per_s, plan_bytes, and whether the goals are met.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 600.0
GOAL_MB = 2048.0


def child(url: str, out: str, chip_px: int) -> dict[str, object]:
    """Plan through the STAC API at ``url`` into ``out``; timings and peak RSS of this process."""
    from eoforge.config import DataConfig, parse_config
    from eoforge.plan import io as plan_io

    raw = {
        "kind": "data",
        "catalog": {"backend": "stac_api", "url": url, "provider": "eoforge", "page_size": 500},
        "chips": {"size_px": chip_px},
        "pairing": {"max_days": 3},
    }
    cfg = parse_config(raw, "bench", DataConfig)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        digest, n = plan_io.build_plan(cfg, out, timings=timings)
    except TypeError:  # code before the streaming planner: no timings
        digest, n = plan_io.build_plan(cfg, out)
    wall = time.perf_counter() - t0
    rss_plan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    if hasattr(plan_io, "verify_plan"):
        assert plan_io.verify_plan(out) == digest
    else:
        assert plan_io.read_plan(out)[1] == digest
    verify = time.perf_counter() - t1
    return {
        "chips": n,
        "wall_s": round(wall, 2),
        **{k: round(v, 2) for k, v in timings.items()},
        "verify_s": round(verify, 2),
        "peak_rss_mb": round(rss_plan, 1),
        "peak_rss_with_verify_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "plan_hash": digest,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=1_000_000, help="Least number of chips of the catalog's plan.")
    ap.add_argument("--chip-px", type=int, default=64, help="Chip side, pixels (10 m).")
    ap.add_argument("--tile-px", type=int, default=10980, help="S2 tile side, pixels (10 m).")
    ap.add_argument("--workdir", type=Path, default=None, help="Keep the ndjson and the plan here.")
    ap.add_argument("--child", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.chip_px)), flush=True)
        return 0

    sys.path.insert(0, str(REPO))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="eoforge-plan-scale-"))
    try:
        return _run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    from tests.support.plan_items import collections, tile_items, tiles_for, write_ndjson
    from tests.support.stac_api import start_stac_api

    work.mkdir(parents=True, exist_ok=True)
    tiles, dates = tiles_for(args.chips, args.tile_px, args.chip_px)
    t0 = time.perf_counter()
    n_items = write_ndjson(work / "items.ndjson", tile_items(tiles, dates, args.tile_px))
    bbox = [-180.0, -90.0, 180.0, 90.0]
    write_ndjson(work / "collections.ndjson", collections(bbox))
    print(f"[plan_scale] {n_items} items ({tiles} tiles x {dates} dates, S2 + S1) in {work}", file=sys.stderr)
    api = start_stac_api(work / "collections.ndjson", work / "items.ndjson")
    load_s = time.perf_counter() - t0
    print(f"[plan_scale] pgstac loaded, STAC API at {api.url} ({load_s:.1f} s)", file=sys.stderr)
    try:
        out = work / "plan.parquet"
        proc = subprocess.run(
            [sys.executable, __file__, "--chip-px", str(args.chip_px), "--child", api.url, str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"planner child failed with exit code {proc.returncode}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        api.stop()
    chips = int(result["chips"])
    result.update(
        items=n_items,
        catalog_load_s=round(load_s, 1),
        chips_per_s=round(chips / max(float(result["wall_s"]), 1e-9)),
        plan_bytes=out.stat().st_size,
        goal_wall_s=GOAL_S,
        goal_rss_mb=GOAL_MB,
        wall_ok=float(result["wall_s"]) <= GOAL_S,
        rss_ok=float(result["peak_rss_mb"]) <= GOAL_MB,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
