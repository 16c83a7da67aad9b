"""Streaming throughput, per core: eoforge's Ray Data stream vs TorchGeo vs the decode limit.

Three contenders read the same chips (same plan, same local COGs, same chip size and bands) in one
process run, one contender after the other:

- ``eoforge``: ``build_chip_dataset(plan, split="all", normalize="none", read_tasks=--read-tasks,
  read_cpus=--read-cpus, keep_open=False)`` then ``ds.iter_batches(batch_size=--batch,
  batch_format="numpy")`` on a local Ray started with ``ray.init(num_cpus=--cores)``; chips counted
  where ``ok`` is True. Each pass builds the dataset anew, as every training epoch does, and its
  read tasks open their files afresh (``keep_open=False``), so every tile is read and decoded once
  per pass, like the decode limit, and like any plan larger than GDAL's block cache.
- ``torchgeo``: ``RasterDataset`` of the S2 bands (+ SCL, separate files) ``&`` a ``RasterDataset``
  of S1 VV/VH (an ``IntersectionDataset``), ``RandomGeoSampler(size=--chip px, length=chips,
  roi=the plan chips' bounds)``, ``DataLoader(batch_size=--batch, collate_fn=stack_samples,
  num_workers=--torchgeo-workers)``. TorchGeo warps S1 (EPSG:4326) and resamples the 20/60 m bands
  onto the 10 m UTM grid on the fly; its samples are raw (no normalisation), like eoforge's here.
- ``decode_limit``: one process, one thread: every internal tile of every band COG (12 S2 bands,
  SCL, VV, VH, each at its native grid) that the plan's chips touch is read and decoded exactly
  once (rasterio block windows), then the chips are cut by slicing (20/60 m bands at their own
  resolution, S1 on its own lon/lat grid: the covering window, no reprojection).

``eoforge_warm_files`` is the same stream with the default ``keep_open=True``: the pooled reading
processes keep their files open from one pass to the next, and with them GDAL's decoded blocks, so
a plan this small (its tiles fit in ``GDAL_CACHEMAX``) is not decoded again after the first pass. It
is reported as ``warm_files_ratio_vs_raw``, apart from ``ratio_vs_raw``.

``ray_hop`` is the stream with the reading left out (:func:`hop_dataset`): the same Ray Data
pipeline (read tasks, chunks, block size, object-store budget, order, consumer), whose tasks yield
blocks of the stream's columns and bytes, every pixel byte written (:func:`hop_task`). Its time per
chip is what the hop from the readers to the consumer costs on these cores, whatever the reader does
(writing a fresh block of 122 kB a chip included). ``hop_ceiling_vs_raw`` is
decode limit ms / (decode limit ms + hop ms) per chip and core: the ``ratio_vs_raw`` of a reader
that did only the decode limit's work (no resampling, reprojection, masks or dtype conversion)
behind this hop, if the two costs add on one core.

A sixth contender, ``eoforge_materialized``, is the repeated epochs of a materialised plan
(``data.materialize: true``): each plan is decoded once through the stream into Parquet files
(the chip cache: ``ensure_chip_cache``, untimed), then a pass is one worker's epoch read back from it
(``iter_materialized_batches``, batches of ``--batch``), in this process on the same ``--cores``. It
is reported as ``materialized_ratio_vs_raw``, apart from the live stream's ``ratio_vs_raw``.

Timing: the small plan holds every chip of the first ``--scenes`` scenes (N chips), the large one
every chip of twice as many scenes (2N), so the large plan adds whole scenes: all their tiles of every
band, their files. Each contender makes ``--warmup`` untimed rounds of one pass over each plan, then
``--repeats`` rounds of one pass over each plan. ``<contender>_chips_per_s`` is the marginal rate
N / median(T(2N) - T(N)): what the chips of one more scene cost once a pass runs, without the per-pass
start (Ray Data's scheduling, DataLoader workers); ``<contender>_end_to_end_chips_per_s`` is
N / median T(N), start included, and ``<contender>_pass_overhead_s`` = T(N) - N / marginal rate (the
per-pass start, estimated).

Per core: every process of a contender is pinned (``sched_setaffinity``) to ``--cores`` CPUs (the
decode limit to 1), so Ray's own processes and DataLoader workers count against the same cores.
``chips_per_s_per_core`` = eoforge's marginal chips/s / ``--cores``; ``ratio_vs_torchgeo`` and
``ratio_vs_raw`` (= vs the decode limit) compare marginal chips/s per core; ``ratios_end_to_end``
the same with the start included. Goals: ``ratio_vs_torchgeo`` >= 3, ``ratio_vs_raw`` >= 0.7.

Readers on cores of their own (``--own-cores N``, default 1; 0 skips it; ``--only-own-cores``
measures it alone): how a GPU node runs the stream, the trainer on the GPU and the readers on CPUs
nobody else uses. The consumer (this process) and Ray's own processes (driver, raylet, GCS, idle
workers: this process pins itself before ``ray.init(num_cpus=N)``, and they inherit its CPUs) run
on the first CPUs; the reading tasks move their processes onto the last ``N`` while they read
(``build_chip_dataset(..., read_cpu_set=<those CPUs>, read_tasks=--own-read-tasks or N,
read_cpus=1, keep_open=False)``, :mod:`eoforge.data.affinity`). ``decode_limit_own_core`` is the
decode limit pinned to the first reader CPU; ``ratio_vs_raw_own_cores`` = eoforge's marginal chips/s
per reader CPU / that decode limit's chips/s (goal >= 0.7), ``end_to_end_vs_raw_own_cores`` the
same with the start included. ``own_cores.busy_share_large_pass`` is the median share of the
2N-plan passes the reader and the other CPUs were busy (``/proc/stat``): a reader CPU below 1 waited
(on the consumer, or between tasks). ``ratio_vs_raw`` (every contender on ``--cores`` shared
CPUs) is measured as before, apart from it.

Data: ``write_demo_catalog`` with 2 x ``--scenes`` + 1 scenes of ``--size`` px at 10 m, one date each
(scene 0 of seed 0 is the heavy-cloud scene: the plan's ``max_cloud_cover=50`` drops it, so the
planned scenes of seed 0 are clear up to 4, i.e. ``--scenes 2``). The demo writes COGs with 256 px blocks
(128 px for the 60 m bands); ``--block 512`` (default) rewrites every COG with 512 px blocks like
real S2 COGs (``--block 0`` keeps the demo's). The plan is eoforge's planner on that catalog
(``--chip`` px chips, stride = chip, every chip of every planned scene).

Usage (progress on stderr, the last stdout line is the JSON)::

    PYTHONPATH=$PWD/platform:$PWD python bench/stream.py            # 1 core, 1 vs 2 scenes of 1024 px, 64 px chips
    PYTHONPATH=$PWD/platform:$PWD python bench/stream.py --cores 2 --scenes 2
    PYTHONPATH=$PWD/platform:$PWD python bench/stream.py --only-own-cores   # readers on the last CPU, the rest apart

Needs the ``bench`` extra (``pip install -e .[bench]``: torchgeo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform as pyplatform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import rasterio
import rasterio.shutil
from cores import own_cores_layout, pin, pin_to, with_busy  # bench/cores.py (sys.path[0])
from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_ASSET
from eoforge.catalog.assets import gdal_path
from eoforge.config import DataConfig, parse_config
from eoforge.demo.catalog import write_demo_catalog
from eoforge.plan.io import build_plan, read_plan, write_plan
from eoforge.ray_node import with_node_env
from pyproj import Transformer
from rasterio.windows import Window

S2_FILES = (*S2_BAND_NAMES, S2_SCL_ASSET)


# ----------------------------------------------------------------------------------------- setup


def retile(path: Path, block: int) -> None:
    """Rewrite one COG in place with ``block`` x ``block`` px internal tiles (values unchanged)."""
    tmp = path.with_suffix(".retile.tif")
    with rasterio.open(path) as src:
        nearest = src.dtypes[0] == "uint8"  # classes (SCL, labels): nearest overviews
    rasterio.shutil.copy(
        path,
        tmp,
        driver="COG",
        BLOCKSIZE=str(block),
        COMPRESS="DEFLATE",
        PREDICTOR="YES",
        OVERVIEW_RESAMPLING="NEAREST" if nearest else "AVERAGE",
    )
    tmp.replace(path)


def make_data(root: Path, scenes: int, size_px: int, chip: int, block: int, chips: int) -> tuple[str, list[dict]]:
    """Demo catalog (+ retiling) and its chip plan; returns (plan path, plan rows).

    ``scenes`` scenes are planned (one more, cloudy, is written and left out); ``chips`` > 0 keeps the
    plan's first rows only.
    """
    cat = write_demo_catalog(root / "cat", scenes=scenes + 1, size_px=size_px, dates_per_scene=1, seed=0)
    if block:
        for tif in sorted((cat.root / "data").rglob("*.tif")):
            retile(tif, block)
    cfg = parse_config(
        {
            "kind": "data",
            "catalog": {"backend": "static", "url": str(cat.catalog_json), "max_cloud_cover": 50},
            "chips": {"size_px": chip},
        },
        "bench",
        DataConfig,
    )
    build_plan(cfg, root / "full.parquet")
    frame, _ = read_plan(root / "full.parquet")
    if chips > len(frame):
        raise SystemExit(f"--chips {chips}: the plan has only {len(frame)} chips (raise --scenes or --size)")
    rows = frame.head(chips).to_dict("records") if chips else frame.to_dict("records")
    plan = root / "plan.parquet"
    write_plan(rows, plan)
    return str(plan), rows


def chip_bounds(rows: list[dict]) -> np.ndarray:
    """UTM bounds of each chip: float64 [N, 4] (left, bottom, right, top), metres."""
    t = np.array([list(r["transform"])[:6] for r in rows], float)
    size = np.array([r["size_px"] for r in rows], float)
    left, top = t[:, 2], t[:, 5]
    return np.stack([left, top + t[:, 4] * size, left + t[:, 0] * size, top], axis=1)


def _clock(fn: Callable[[], dict]) -> dict:
    t0 = time.perf_counter()
    res = fn()
    res["s"] = time.perf_counter() - t0
    return res


def measure(small: Callable[[], dict], large: Callable[[], dict], warmup: int, repeats: int) -> dict:
    """``warmup`` untimed rounds of (``small()``, ``large()``), then ``repeats`` timed rounds of them.

    The warm-up passes over both plans, so the first timed round does not pay what a process keeps
    across passes for the large plan alone (eoforge's sample maps of its second scene, imports).

    Each pass returns ``{"chips": n, ...}``. Returns the rates (module docstring) and every pass.
    """
    for _ in range(warmup):
        small()
        large()
    rounds = [(_clock(small), _clock(large)) for _ in range(repeats)]
    n_small, n_large = rounds[0][0]["chips"], rounds[0][1]["chips"]
    t_small = statistics.median(a["s"] for a, _ in rounds)
    t_diff = statistics.median(b["s"] - a["s"] for a, b in rounds)
    marginal = (n_large - n_small) / t_diff if t_diff > 0 else float("nan")
    return {
        "chips_per_s": marginal,
        "end_to_end_chips_per_s": n_small / t_small,
        "pass_overhead_s": t_small - n_small / marginal,
        "chips": [n_small, n_large],
        "passes_s": [[round(a["s"], 3), round(b["s"], 3)] for a, b in rounds],
        "rounds": rounds,
    }


# ----------------------------------------------------------------------------------------- decode limit


def _cut(src: rasterio.DatasetReader, win: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Decode every tile of ``src`` under the windows once, then slice them: (chips, tiles decoded).

    ``win``: int [N, 4] (row0, row1, col0, col1) in ``src`` pixels, clipped to the raster.
    """
    bh, bw = src.block_shapes[0]
    tiles = set()
    for r0, r1, c0, c1 in win:
        for tr in range(r0 // bh, (r1 - 1) // bh + 1):
            for tc in range(c0 // bw, (c1 - 1) // bw + 1):
                tiles.add((tr, tc))
    tr0, tc0 = min(t[0] for t in tiles), min(t[1] for t in tiles)
    tr1, tc1 = max(t[0] for t in tiles) + 1, max(t[1] for t in tiles) + 1
    mosaic = np.zeros(((tr1 - tr0) * bh, (tc1 - tc0) * bw), src.dtypes[0])
    for tr, tc in tiles:
        w = Window(tc * bw, tr * bh, min(bw, src.width - tc * bw), min(bh, src.height - tr * bh))
        y, x = (tr - tr0) * bh, (tc - tc0) * bw
        mosaic[y : y + w.height, x : x + w.width] = src.read(1, window=w)
    y0, x0 = tr0 * bh, tc0 * bw
    return [mosaic[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0].copy() for r0, r1, c0, c1 in win], len(tiles)


def _windows(src: rasterio.DatasetReader, bounds: np.ndarray, crs: str) -> np.ndarray:
    """Pixel windows of ``src`` covering each chip (int [N, 4] row0, row1, col0, col1), no resampling."""
    left, bottom, right, top = bounds.T
    if src.crs.to_string() != crs:  # S1 on its lon/lat grid: the chip outline (3 points per edge) there
        f = np.linspace(0, 1, 3)[:, None]
        xs = np.concatenate([left + (right - left) * f, left + (right - left) * f, left + 0 * f, right + 0 * f])
        ys = np.concatenate([bottom + 0 * f, top + 0 * f, bottom + (top - bottom) * f, bottom + (top - bottom) * f])
        xs, ys = Transformer.from_crs(crs, src.crs, always_xy=True).transform(xs, ys)
        left, right, bottom, top = xs.min(0), xs.max(0), ys.min(0), ys.max(0)
    t = src.transform
    eps = 1e-6
    c0 = np.floor((left - t.c) / t.a + eps)
    c1 = np.ceil((right - t.c) / t.a - eps)
    r0 = np.floor((top - t.f) / t.e + eps)
    r1 = np.ceil((bottom - t.f) / t.e - eps)
    win = np.stack([r0, r1, c0, c1], axis=1).astype(int)
    win[:, :2] = np.clip(win[:, :2], 0, src.height)
    win[:, 2:] = np.clip(win[:, 2:], 0, src.width)
    return win


def decode_limit_pass(rows: list[dict], keep: bool = False) -> dict:
    """Every touched tile decoded once, chips cut by slicing; counts chips and tiles.

    With ``keep``, ``first`` holds the first chip's arrays (hrefs order: S2 bands, SCL, VV, VH).
    """
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(str(r["s2_assets"]), str(r["s1_assets"]), str(r["scl_href"]))].append(i)
    bounds_all = chip_bounds(rows)
    n = tiles = 0
    first: list[np.ndarray] = []
    for (s2_json, s1_json, scl), idx in groups.items():
        s2, s1 = json.loads(s2_json), json.loads(s1_json)
        hrefs = [s2[b] for b in S2_BAND_NAMES] + [scl] + [s1[b] for b in S1_BAND_NAMES]
        crs = str(rows[idx[0]]["crs"])
        chips: list[list[np.ndarray]] = [[] for _ in idx]
        for href in hrefs:
            with rasterio.open(gdal_path(href)) as src:
                cut, k = _cut(src, _windows(src, bounds_all[idx], crs))
            tiles += k
            for c, a in zip(chips, cut, strict=True):
                c.append(a)
        n += sum(1 for c in chips if all(a.size for a in c))
        if keep and idx[0] == 0:
            first = chips[0]
    return {"chips": n, "tiles": tiles, **({"first": first} if keep else {})}


def check_decode_limit(rows: list[dict]) -> None:
    """The decode limit's 10 m chips are the stored pixels: B02 of chip 0 equals eoforge's aligned read."""
    from eoforge.data.grid import ChipGrid
    from rasterio.enums import Resampling
    from rasterio.transform import Affine

    from tests.support.gdal_reference import read_band

    r = rows[0]
    grid = ChipGrid(str(r["crs"]), Affine(*list(r["transform"])[:6]), int(r["size_px"]))
    ref = read_band(json.loads(str(r["s2_assets"]))["B02"], grid, Resampling.bilinear, 0.0)
    got = decode_limit_pass(rows[:1], keep=True)["first"][S2_BAND_NAMES.index("B02")]
    if got.shape != ref.shape or not np.array_equal(got.astype(np.float32), ref):
        raise SystemExit(f"decode limit: chip {r['chip_id']} B02 differs from eoforge's read (bench bug)")


# ----------------------------------------------------------------------------------------- torchgeo


def torchgeo_loader(rows: list[dict], chip: int, batch: int, workers: int) -> tuple[Any, dict]:
    """TorchGeo DataLoader over S2 (12 bands + SCL) & S1 (VV, VH), and notes on what it did."""
    import torch
    from pyproj import CRS
    from shapely.geometry import box
    from torch.utils.data import DataLoader
    from torchgeo.datasets import IntersectionDataset, RasterDataset, stack_samples
    from torchgeo.samplers import RandomGeoSampler

    class DemoS2(RasterDataset):
        filename_glob = f"{S2_FILES[0]}.tif"
        filename_regex = r"^(?P<band>B\d[\dA]|SCL)\.tif$"
        separate_files = True
        all_bands = S2_FILES

    class DemoS1(RasterDataset):
        filename_glob = f"{S1_BAND_NAMES[0]}.tif"
        filename_regex = r"^(?P<band>v[vh])\.tif$"
        separate_files = True
        all_bands = S1_BAND_NAMES

    crs = CRS.from_user_input(str(rows[0]["crs"]))
    s2_dirs = sorted({os.path.dirname(gdal_path(json.loads(str(r["s2_assets"]))["B02"])) for r in rows})
    s1_dirs = sorted({os.path.dirname(gdal_path(json.loads(str(r["s1_assets"]))["vv"])) for r in rows})
    s2 = DemoS2(s2_dirs, crs=crs, res=10.0)
    s1 = DemoS1(s1_dirs, crs=crs, res=10.0)
    ds = IntersectionDataset(s2, s1)
    b = chip_bounds(rows)
    roi = box(b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
    with warnings.catch_warnings():  # 0.10 deprecates it for RandomPatchSampler; the brief names it
        warnings.simplefilter("ignore", DeprecationWarning)
        sampler = RandomGeoSampler(ds, size=chip, length=len(rows), roi=roi, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, sampler=sampler, batch_size=batch, num_workers=workers, collate_fn=stack_samples)
    notes = {
        "dataset": "IntersectionDataset(RasterDataset S2 12 bands + SCL, RasterDataset S1 vv/vh), separate_files",
        "sampler": "RandomGeoSampler(size=chip px at 10 m, length=chips, roi=bounds of the plan's chips); "
        "deprecated in 0.10 for RandomPatchSampler (same dataset reads)",
        "s1": "S1 is on its own EPSG:4326 grid: TorchGeo warps it (WarpedVRT) to the S2 UTM CRS at 10 m",
        "s2_20_60m": "TorchGeo resamples the 20/60 m bands (and SCL, bilinear) to 10 m per sample",
        "per_date_pairing": "none: no date in the file names, so one date per scene (mosaics otherwise)",
        "samples": "image float32 [B, 15, chip, chip] (13 S2 + 2 S1), raw values",
    }
    return loader, notes


def torchgeo_pass(loader: Any) -> dict:
    n = 0
    for sample in loader:
        n += int(sample["image"].shape[0])
    return {"chips": n}


# ----------------------------------------------------------------------------------------- eoforge


def _tiles(chip_ids: list[str], block: int) -> set[tuple[str, int, int]]:
    """10 m COG tiles (S2 item, tile row, tile col) of chips named ``{s2_item}:{row px}:{col px}``."""
    out = set()
    for c in chip_ids:
        item, r, col = c.rsplit(":", 2)
        out.add((item, int(r) // block, int(col) // block))
    return out


#: The pixel columns a reader writes in full that ``empty_chip_block`` leaves as calloc'd zeros (``label`` is
#: allocated filled with 255, so its pages are written already).
PIXEL_COLUMNS = ("s2", "s1", "valid")


def hop_task(batch: dict[str, np.ndarray], size: int, shuffle_rows: int) -> Any:
    """The ``ray_hop`` UDF: a read task's rows as chip blocks (every row ok), in its chunks; nothing read.

    Each block is allocated as the reader allocates its chunk's block, and every byte of its pixel
    columns is written, as the reader writes them: a block left as allocated is calloc'd pages that
    were never touched, which cost no page faults here and are copied from the kernel's one zero
    page when Ray stores them, so the hop measured on them is too cheap (0.14-0.18 ms/chip instead
    of 0.21-0.31 ms/chip on this machine, ``docs/benchmarks.md``).
    """
    from eoforge.data.reader_task import empty_chip_block

    for take in batch["take"]:
        left = int(take)
        while left > 0:
            out = empty_chip_block(min(shuffle_rows, left), size)  # the reader allocates its chunk's block alike
            for name in PIXEL_COLUMNS:
                out[name].view(np.uint8).reshape(-1)[:] = 1  # every page touched, as a reader writes them
            out["ok"][:] = True
            out["chip_id"][:] = "hop:0:0"
            left -= len(out["ok"])
            yield out


def hop_dataset(plan: str, ds_kwargs: dict) -> Any:
    """``build_chip_dataset(plan, split="all", **ds_kwargs)``'s Ray Data pipeline with the reading left out.

    The same read tasks (count, rows, chunks), block size, object-store budget, order and CPU-only
    task pool; each task yields blocks of the stream's columns, dtypes and bytes, their pixels written
    but not read (:func:`hop_task`). Its pass time is what the hop between the readers and the
    consumer costs on these cores: writing the blocks, tasks, block transfer through the object
    store, the driver's executor and batching, Ray's own processes.
    """
    from eoforge.data.dataset import StreamOptions, task_pool
    from eoforge.data.epochs import epoch_tasks

    kw = StreamOptions(**ds_kwargs)
    items, _ = epoch_tasks(
        plan, "all", kw.window_rows, kw.shard, kw.shuffle_seed, kw.epoch, 0, kw.mix_windows, kw.shuffle_rows
    )
    size = int(pq.ParquetFile(plan).read_row_group(0, columns=["size_px"]).column(0)[0].as_py())
    hop = {"size": size, "shuffle_rows": kw.shuffle_rows}
    pool = (kw.read_tasks, kw.read_cpus, kw.block_mb, kw.object_store_mb)
    return task_pool(items, hop_task, hop, *pool)


def eoforge_pass(plan: str, batch: int, block: int, ds_kwargs: dict, hop: bool = False) -> dict:
    """One pass of eoforge's stream (``hop``: of :func:`hop_dataset`): ok chips, rows, first batch, diversity."""
    from eoforge.data.dataset import build_chip_dataset

    t0 = time.perf_counter()
    ds = hop_dataset(plan, ds_kwargs) if hop else build_chip_dataset(plan, split="all", normalize="none", **ds_kwargs)
    n_ok = n_rows = 0
    first_s = first_n = None
    items, tiles = [], []
    for b in ds.iter_batches(batch_size=batch, batch_format="numpy"):
        ok = np.asarray(b["ok"], bool)
        n_ok += int(ok.sum())
        n_rows += len(ok)
        if first_s is None:
            first_s, first_n = time.perf_counter() - t0, int(ok.sum())
        ids = [str(c) for c in np.asarray(b["chip_id"])[ok]]
        items.append(len({c.rsplit(":", 2)[0] for c in ids}))
        tiles.append(len(_tiles(ids, block)))
    return {"chips": n_ok, "rows": n_rows, "first_s": first_s, "first_n": first_n, "items": items, "tiles": tiles}


def materialize(plan: str, cache_dir: Path, kw: dict) -> str:
    """The plan's materialised chips (``data.materialize``: decoded once through the stream), untimed."""
    from eoforge.config.jobs import PlanSource
    from eoforge.data.chip_cache import ensure_chip_cache
    from eoforge.plan.io import verify_plan

    reading = {k: kw[k] for k in ("read_tasks", "read_cpus")}
    data = PlanSource.model_validate({"plan": plan, "split": "all", "normalize": "none", **reading})
    return ensure_chip_cache(data, verify_plan(plan), str(cache_dir))


def materialized_pass(cache: str, batch: int) -> dict:
    """One epoch of a materialised plan (one worker): ok chips."""
    from eoforge.data.materialized import iter_materialized_batches

    n = 0
    for b in iter_materialized_batches(cache, "all", batch):
        n += int(np.asarray(b["ok"], bool).sum())
    return {"chips": n}


# ----------------------------------------------------------------------------------------- main


def main() -> None:
    args = _args()
    block = args.block or 256
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        plan_large, rows_large = make_data(Path(tmp), 2 * args.scenes, args.size, args.chip, args.block, 0)
        items = list(dict.fromkeys(str(r["s2_item"]) for r in rows_large))
        if len(items) != 2 * args.scenes:
            raise SystemExit(f"the plan has {len(items)} S2 items, expected {2 * args.scenes} (one per scene)")
        rows_small = [r for r in rows_large if r["s2_item"] in items[: args.scenes]]
        plan_small = str(Path(tmp) / "plan_small.parquet")
        write_plan(rows_small, plan_small)
        check_decode_limit(rows_small)
        print(f"data ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        out: dict[str, Any] = {"chips": len(rows_small), "chips_large": len(rows_large), "chip_px": args.chip}
        out.update({"scenes": args.scenes, "scenes_large": 2 * args.scenes, "scene_px": args.size})
        out.update({"block_px": block, "cores": args.cores, "batch": args.batch, "repeats": args.repeats})
        out["bands"] = {"s2": [*S2_BAND_NAMES], "s2_mask": S2_SCL_ASSET, "s1": [*S1_BAND_NAMES]}
        kw: dict[str, Any] = {"read_tasks": args.read_tasks or args.cores, "read_cpus": args.read_cpus}
        if args.shuffle_rows:
            kw["shuffle_rows"] = args.shuffle_rows
        if args.max_open:
            kw["max_open"] = args.max_open
        if args.mix_windows:
            kw["mix_windows"] = args.mix_windows
        plans, rows = (plan_small, plan_large), (rows_small, rows_large)
        results: dict[str, dict] = {}
        cores: dict[str, int] = {}
        if not args.only_own_cores:
            measure_shared_cores(args, kw, plans, rows, Path(tmp), results, cores, out)
        if args.own_cores:
            measure_own_cores(args, kw, plans, rows, results, cores, out)
        out["eoforge_build_chip_dataset"] = kw
        out.update(_report(results, cores, rows_large, block))
        out["versions"] = _versions()
        out["machine"] = {"cpu_count": os.cpu_count(), "cpu": _cpu_model(), "python": pyplatform.python_version()}
        print(json.dumps(out))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=1, help="scenes of the small plan (the large one has twice)")
    ap.add_argument("--size", type=int, default=1024, help="scene side, px at 10 m")
    ap.add_argument("--chip", type=int, default=64, help="chip side, px at 10 m")
    ap.add_argument("--block", type=int, default=512, help="COG internal tile size (0: the demo's 256)")
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="rounds of (N, 2N) passes; the rates are medians")
    ap.add_argument("--torchgeo-workers", type=int, default=None, help="default: 0 with 1 core, else --cores")
    ap.add_argument("--read-tasks", type=int, default=None, help="build_chip_dataset read_tasks (default --cores)")
    ap.add_argument("--read-cpus", type=float, default=1.0, help="build_chip_dataset read_cpus")
    ap.add_argument("--shuffle-rows", type=int, default=None, help="build_chip_dataset shuffle_rows")
    ap.add_argument("--max-open", type=int, default=None, help="build_chip_dataset max_open (per reading process)")
    ap.add_argument("--mix-windows", type=int, default=None, help="build_chip_dataset mix_windows")
    ap.add_argument("--skip-torchgeo", action="store_true")
    ap.add_argument(
        "--own-cores",
        type=int,
        default=1,
        help="reader CPUs of the own-cores run (the last N CPUs; the consumer and Ray on the others); 0 skips it",
    )
    ap.add_argument("--only-own-cores", action="store_true", help="measure the own-cores run alone")
    ap.add_argument("--own-read-tasks", type=int, default=None, help="read_tasks of the own-cores run (default N)")
    ap.add_argument("--workdir", default=None, help="keep data here (default: a temporary folder)")
    return ap.parse_args()


def _start_ray(num_cpus: int) -> None:
    """A private local Ray of ``num_cpus`` logical CPUs, with eoforge's node settings, on this process's CPUs."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance (no ~/.ray/auth_token made)
    with_node_env(os.environ)  # eoforge's Ray node settings, as `eoforge up` and init_ray start Ray
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def measure_shared_cores(
    args: argparse.Namespace,
    kw: dict[str, Any],
    plans: tuple[str, str],
    rows: tuple[list[dict], list[dict]],
    tmp: Path,
    results: dict[str, dict],
    cores: dict[str, int],
    out: dict[str, Any],
) -> None:
    """Every contender on ``--cores`` shared CPUs (the decode limit on 1): ``ratio_vs_raw`` and the rest."""
    import ray

    (plan_small, plan_large), (rows_small, rows_large) = plans, rows
    block = args.block or 256
    tg_workers = args.torchgeo_workers if args.torchgeo_workers is not None else (0 if args.cores == 1 else args.cores)
    cores.update({"decode_limit": 1, "torchgeo": max(1, tg_workers), "eoforge": args.cores})
    cores["eoforge_materialized"] = cores["eoforge_warm_files"] = cores["ray_hop"] = args.cores
    pin(1)
    results["decode_limit"] = measure(
        lambda: decode_limit_pass(rows_small), lambda: decode_limit_pass(rows_large), args.warmup, args.repeats
    )
    out["decode_limit_tiles"] = results["decode_limit"]["rounds"][0][0]["tiles"]
    _progress("decode_limit", results)

    out["pinned_cpus"] = pin(args.cores)
    if not args.skip_torchgeo:
        import torch

        torch.set_num_threads(args.cores)
        small, notes = torchgeo_loader(rows_small, args.chip, args.batch, tg_workers)
        large, _ = torchgeo_loader(rows_large, args.chip, args.batch, tg_workers)
        results["torchgeo"] = measure(
            lambda: torchgeo_pass(small), lambda: torchgeo_pass(large), args.warmup, args.repeats
        )
        out["torchgeo_workers"], out["torchgeo_notes"] = tg_workers, notes
        _progress("torchgeo", results)
        del small, large

    _start_ray(args.cores)
    try:
        cold = {**kw, "keep_open": False}  # every tile read and decoded once per pass, as the decode limit
        results["eoforge"] = measure(
            lambda: eoforge_pass(plan_small, args.batch, block, cold),
            lambda: eoforge_pass(plan_large, args.batch, block, cold),
            args.warmup,
            args.repeats,
        )
        _progress("eoforge", results)
        # the same Ray Data pipeline, nothing read: what the hop alone costs (the ceiling of ratio_vs_raw)
        results["ray_hop"] = measure(
            lambda: eoforge_pass(plan_small, args.batch, block, cold, hop=True),
            lambda: eoforge_pass(plan_large, args.batch, block, cold, hop=True),
            args.warmup,
            args.repeats,
        )
        _progress("ray_hop", results)
        # the default: files (and GDAL's decoded blocks) kept open from one epoch to the next
        results["eoforge_warm_files"] = measure(
            lambda: eoforge_pass(plan_small, args.batch, block, kw),
            lambda: eoforge_pass(plan_large, args.batch, block, kw),
            args.warmup,
            args.repeats,
        )
        _progress("eoforge_warm_files", results)
        # repeated epochs of a materialised plan (data.materialize): decoded once (untimed), then re-read
        caches = [materialize(plan, tmp / "materialized", kw) for plan in (plan_small, plan_large)]
        results["eoforge_materialized"] = measure(
            lambda: materialized_pass(caches[0], args.batch),
            lambda: materialized_pass(caches[1], args.batch),
            args.warmup,
            args.repeats,
        )
        _progress("eoforge_materialized", results)
    finally:
        ray.shutdown()


def measure_own_cores(
    args: argparse.Namespace,
    kw: dict[str, Any],
    plans: tuple[str, str],
    rows: tuple[list[dict], list[dict]],
    results: dict[str, dict],
    cores: dict[str, int],
    out: dict[str, Any],
) -> None:
    """The stream with its readers on ``--own-cores`` CPUs of their own: ``ratio_vs_raw_own_cores``.

    The decode limit runs pinned to the first reader CPU (``decode_limit_own_core``). Then this
    process (the consumer) pins itself to the other CPUs and starts Ray there, so the driver, raylet,
    GCS and idle workers inherit them; the stream's read tasks move their processes onto the reader
    CPUs while they read (``read_cpu_set``, :mod:`eoforge.data.affinity`), ``read_cpus`` 1 each.
    """
    import ray

    (plan_small, plan_large), (rows_small, rows_large) = plans, rows
    block = args.block or 256
    system, readers = own_cores_layout(args.own_cores)
    cores.update({"decode_limit_own_core": 1, "eoforge_own_cores": len(readers)})
    groups = {"reader_cpus": readers, "system_cpus": system}

    pin_to(readers[:1])
    results["decode_limit_own_core"] = measure(
        lambda: decode_limit_pass(rows_small), lambda: decode_limit_pass(rows_large), args.warmup, args.repeats
    )
    _progress("decode_limit_own_core", results)

    out["own_cores"] = {"consumer_and_ray_cpus": pin_to(system), "reader_cpus": readers}
    own = {**kw, "read_tasks": args.own_read_tasks or len(readers), "read_cpus": 1.0}
    own.update({"keep_open": False, "read_cpu_set": readers})  # cold, as ratio_vs_raw
    _start_ray(len(readers))
    try:
        results["eoforge_own_cores"] = measure(
            with_busy(lambda: eoforge_pass(plan_small, args.batch, block, own), groups),
            with_busy(lambda: eoforge_pass(plan_large, args.batch, block, own), groups),
            args.warmup,
            args.repeats,
        )
        _progress("eoforge_own_cores", results)
    finally:
        ray.shutdown()
    large_passes = [b for _, b in results["eoforge_own_cores"]["rounds"]]
    out["own_cores"]["busy_share_large_pass"] = {
        g: round(statistics.median(p[f"busy_{g}"] for p in large_passes), 3) for g in groups
    }
    out["own_cores"]["build_chip_dataset"] = {k: v for k, v in own.items() if k != "read_cpu_set"} | {
        "read_cpu_set": readers
    }


def _progress(name: str, results: dict[str, dict]) -> None:
    r = results[name]
    print(f"{name}: passes (N, 2N) {r['passes_s']} s; {r['chips_per_s']:.1f} chips/s", file=sys.stderr, flush=True)


def _report(results: dict[str, dict], cores: dict[str, int], rows_large: list[dict], block: int) -> dict:
    """The JSON fields of the rates, ratios, goals and eoforge's batch diversity."""
    out: dict[str, Any] = {}
    per_core, e2e_core = {}, {}
    for name, r in results.items():
        out[f"{name}_chips_per_s"] = _num(r["chips_per_s"], 2)
        out[f"{name}_end_to_end_chips_per_s"] = _num(r["end_to_end_chips_per_s"], 2)
        out[f"{name}_pass_overhead_s"] = _num(r["pass_overhead_s"], 3)
        out[f"{name}_cores"] = cores[name]
        per_core[name] = r["chips_per_s"] / cores[name]
        e2e_core[name] = r["end_to_end_chips_per_s"] / cores[name]
    out["ms_per_chip_per_core"] = {k: _num(1000 / v, 3) for k, v in per_core.items()}
    goals: dict[str, bool] = {}
    if "eoforge_own_cores" in per_core:  # readers on CPUs of their own, vs the decode limit on one of them
        out["ratio_vs_raw_own_cores"] = _num(per_core["eoforge_own_cores"] / per_core["decode_limit_own_core"], 4)
        out["end_to_end_vs_raw_own_cores"] = _num(e2e_core["eoforge_own_cores"] / e2e_core["decode_limit_own_core"], 4)
        goals["ratio_vs_raw_own_cores>=0.7"] = (out["ratio_vs_raw_own_cores"] or 0) >= 0.7
    if "eoforge" in per_core:
        out.update(_shared_cores_report(results, per_core, e2e_core, rows_large, block, goals))
    out["goals"] = goals
    out["passes_s"] = {name: r["passes_s"] for name, r in results.items()}
    return out


def _shared_cores_report(
    results: dict[str, dict],
    per_core: dict[str, float],
    e2e_core: dict[str, float],
    rows_large: list[dict],
    block: int,
    goals: dict[str, bool],
) -> dict:
    """The ratios of the contenders on shared cores (``ratio_vs_raw`` and the rest); adds their goals."""
    out: dict[str, Any] = {"chips_per_s_per_core": _num(per_core["eoforge"], 2)}
    out["ratio_vs_raw"] = _num(per_core["eoforge"] / per_core["decode_limit"], 4)
    if "eoforge_materialized" in per_core:  # repeated epochs of a materialised plan (not the live stream)
        out["materialized_ratio_vs_raw"] = _num(per_core["eoforge_materialized"] / per_core["decode_limit"], 4)
    if "eoforge_warm_files" in per_core:  # tiles decoded in an earlier pass, from GDAL's block cache
        out["warm_files_ratio_vs_raw"] = _num(per_core["eoforge_warm_files"] / per_core["decode_limit"], 4)
    if "ray_hop" in per_core:  # a reader doing only the decode limit's work, plus the hop (costs add on a core)
        out["hop_ceiling_vs_raw"] = _num(1 / (1 + per_core["decode_limit"] / per_core["ray_hop"]), 4)
    e2e = {"vs_raw": _num(e2e_core["eoforge"] / e2e_core["decode_limit"], 4)}
    if "torchgeo" in per_core:
        out["ratio_vs_torchgeo"] = _num(per_core["eoforge"] / per_core["torchgeo"], 3)
        e2e["vs_torchgeo"] = _num(e2e_core["eoforge"] / e2e_core["torchgeo"], 3)
    out["ratios_end_to_end"] = e2e
    goals["ratio_vs_torchgeo>=3"] = (out.get("ratio_vs_torchgeo") or 0) >= 3
    goals["ratio_vs_raw>=0.7"] = (out["ratio_vs_raw"] or 0) >= 0.7
    goals["end_to_end_vs_torchgeo>=3"] = (e2e.get("vs_torchgeo") or 0) >= 3
    goals["end_to_end_vs_raw>=0.7"] = (e2e["vs_raw"] or 0) >= 0.7
    eo_small, eo_large = results["eoforge"]["rounds"][len(results["eoforge"]["rounds"]) // 2]
    out["eoforge_first_batch_s"] = round(eo_small["first_s"], 3)
    out["eoforge_rows_ok"] = f"{eo_large['chips']}/{eo_large['rows']}"
    out["batch_diversity"] = {
        "s2_items_per_batch_mean": round(float(np.mean(eo_large["items"])), 2),
        "tiles_10m_per_batch_mean": round(float(np.mean(eo_large["tiles"])), 2),
        "s2_items_in_plan": len({r["s2_item"] for r in rows_large}),
        "tiles_10m_in_plan": len(_tiles([str(r["chip_id"]) for r in rows_large], block)),
    }
    return out


def _num(x: float, digits: int) -> float | None:
    """``x`` rounded, or None (JSON null) when it is not finite (T(2N) <= T(N): too noisy to tell)."""
    return round(x, digits) if math.isfinite(x) else None


def _versions() -> dict[str, str]:
    import ray

    v = {"rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__, "ray": ray.__version__}
    try:
        import torchgeo

        v["torchgeo"] = torchgeo.__version__
    except ImportError:
        v["torchgeo"] = "not installed"
    return v


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return pyplatform.processor()


if __name__ == "__main__":
    main()
