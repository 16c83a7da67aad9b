"""Predict throughput per core and memory: eoforge's predict job vs a plain window loop vs TorchGeo.

One process run, one machine, one model: a classification ``FinetuneModel`` (resnet18 ``DualBackbone``,
random init after ``torch.manual_seed(0)``, 8 DFC classes, 64 px), registered in the MLflow of a local
stack (``eoforge.stack.up`` on random ports, stopped at the end). Every contender maps the same windows
(64 px, overlap 16, stride 48) of the same S2 items with batches of 64 into a class map:

- ``eoforge``: ``run_predict`` (products ``classes``, ``inference.actors`` 1, default read tasks): plan,
  tile-aware reading tasks, inference actor pool, COG tiles, STAC, MLflow;
- ``naive``: the windows of eoforge's ``<output>/plan.parquet``, read one at a time with
  ``eoforge.data.chip.read_chip`` (ssl4eo), the model in this process, each window's centre block
  (``ItemGrid.block``, as eoforge) put into a full-size uint8 array per item, written once (GeoTIFF);
- ``torchgeo``: ``RasterDataset`` of the 12 S2 band COGs (10/20/60 m -> 10 m) ``&`` one of S1 VV/VH
  (EPSG:4326, warped to the S2 grid), ``GridGeoSampler(size=64, stride=48, roi=the items' extents)``,
  ``DataLoader(collate_fn=stack_samples)``, eoforge's ssl4eo constants (nodata -> 0), centre blocks
  stitched by hand into a full-size array per item, written once.

Timings include loading the model from the registry (as eoforge's actor does); eoforge's also planning,
STAC and MLflow, while the naive loop reuses its plan. An untimed eoforge run on one scene first starts
Ray's workers (``eoforge_cold_wall_s``). ``km2_per_min_per_core`` = km² / wall minutes / ``os.cpu_count()``
(every contender may use every core); ``ratio_vs_*`` = eoforge's over theirs on the 1x area. Every
contender also maps ``--scale`` x the scenes (``*_10x``; ``ratio_vs_*_10x`` compares whole runs there,
``--skip-10x-others`` leaves the other contenders out of it); eoforge's marginal rate (extra km² / extra
time) and the peak RSS of the driver and the summed RSS of the stack's Ray workers (``ray::`` processes
under its ``ray start``), psutil every 0.1 s. ``agreement_with_eoforge``: share of eoforge's mapped pixels where a
contender gives the same class (``classes_in_eoforge_map`` says how telling that is).

Usage (progress on stderr, the last stdout line is the JSON)::

    PYTHONPATH=$PWD/platform:$PWD python bench/predict.py [--scenes 2] [--scale 10] [--size-px 256]

Needs the ``bench`` extra for TorchGeo (``--skip-torchgeo`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOW, OVERLAP, BATCH, MIN_VALID = 64, 16, 64, 0.05


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class RssPeaks:
    """Samples (psutil, every ``period`` s) this process's RSS and the stack's Ray workers' memory.

    The workers' RSS is summed (``workers``), as before. RSS counts a page of shared memory (Ray's
    object store, which every worker maps to read its blocks zero-copy; shared libraries) once in
    every process that touched it, so the sum grows when more blocks pass through more processes
    without any memory being added. So the workers are also read by PSS (``workers_pss``: each
    shared page divided among the processes that map it; the sum is the memory they really hold)
    and one by one: the largest single worker's USS (``largest_uss``: pages only it holds) and how
    many ``ray::`` processes were alive (``processes``), at their peaks.
    """

    def __init__(self, ray_pid: int, period: float = 0.1) -> None:
        import psutil  # Ray's vendored copy (on sys.path once ray is imported)

        self.psutil, self.root, self.me, self.period = psutil, psutil.Process(ray_pid), psutil.Process(), period
        self.driver = self.workers = self.workers_pss = self.largest_uss = self.processes = 0
        self.largest_name = ""
        self.uss_by_title: dict[str, int] = {}  # peak over samples of the summed USS of each process title
        self.count_by_title: dict[str, int] = {}  # peak over samples of the number of processes of each title
        self.start: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _workers(self) -> list[tuple[int, int, int, str]]:
        """(RSS, PSS, USS, the ``ray::`` title) of each Ray worker process alive now."""
        out = []
        for p in self.root.children(recursive=True):
            try:
                title = next((a for a in p.cmdline() if "ray::" in a), None)
                if title is not None:
                    m = p.memory_full_info()
                    out.append((m.rss, m.pss, m.uss, title.split()[0][:60]))
            except self.psutil.Error:  # a worker that exited meanwhile
                continue
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            driver, each = self.me.memory_info().rss, self._workers()
            workers = sum(w[0] for w in each)
            self.start = self.start or (driver, workers)
            self.driver, self.workers = max(self.driver, driver), max(self.workers, workers)
            self.workers_pss = max(self.workers_pss, sum(w[1] for w in each))
            self.processes = max(self.processes, len(each))
            now: dict[str, int] = {}
            count: dict[str, int] = {}
            for w in each:
                now[w[3]] = now.get(w[3], 0) + w[2]
                count[w[3]] = count.get(w[3], 0) + 1
            for title, uss in now.items():
                self.uss_by_title[title] = max(self.uss_by_title.get(title, 0), uss)
                self.count_by_title[title] = max(self.count_by_title.get(title, 0), count[title])
            top = max(each, default=(0, 0, 0, ""), key=lambda w: w[2])
            if top[2] > self.largest_uss:
                self.largest_uss, self.largest_name = top[2], top[3]
            self._stop.wait(self.period)

    def __enter__(self) -> RssPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mb(self) -> list[float]:
        """[driver at start, workers at start, driver peak, workers peak, workers' PSS peak, largest USS], MB."""
        vals = (*(self.start or (0, 0)), self.driver, self.workers, self.workers_pss, self.largest_uss)
        return [v / 2**20 for v in vals]


def register_model(mlflow_url: str) -> str:
    import torch
    from eoforge.bands import DFC_CLASSES
    from eoforge.finetune.task_heads import FinetuneModel
    from eoforge.models.dual import DualBackbone, create_backbone

    sys.path.insert(0, str(REPO))
    from tests.support.predict_models import card, register

    torch.manual_seed(0)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")
    model = FinetuneModel(backbone, "classification", len(DFC_CLASSES), WINDOW)
    return register(model, "bench-predict-classifier", card("classification", list(DFC_CLASSES), WINDOW), mlflow_url)


def load_model(mlflow_url: str, uri: str) -> Any:
    from eoforge.finetune.registered import load_registered_model

    return load_registered_model(uri, "cpu", mlflow_url).eval()


def run_eoforge(cat: Any, items: list[str], out: Path, *, uri: str, mlflow_url: str, ray_pid: int) -> dict:
    from eoforge.config import parse_config
    from eoforge.config.predict import PredictConfig
    from eoforge.predict.job import run_predict

    shutil.rmtree(out, ignore_errors=True)
    raw = {"kind": "predict", "model": uri, "products": ["classes"], "window_px": WINDOW, "overlap_px": OVERLAP}
    raw |= {"catalog": {"backend": "static", "url": str(cat.catalog_json)}, "aoi": {"item_ids": items}}
    raw |= {"inference": {"actors": 1, "batch_size": BATCH}, "output": str(out), "run": {"name": f"bench-{out.name}"}}
    cfg = parse_config(raw | {"mlflow": {"tracking_uri": mlflow_url}}, "bench", PredictConfig)
    with RssPeaks(ray_pid) as mem:
        t0 = time.perf_counter()
        r = run_predict(cfg)
        wall = time.perf_counter() - t0
    out_ = {"wall_s": wall, "km2": r.km2, "windows": r.windows, "nodata_windows": r.nodata_windows}
    out_.update({"failed_windows": r.failed_windows, "tiles": r.tiles})
    out_ |= {"worker_processes_peak": mem.processes, "largest_worker": mem.largest_name}
    out_["uss_mb_by_process_title"] = {t: round(v / 2**20, 1) for t, v in sorted(mem.uss_by_title.items())}
    out_["processes_by_title"] = dict(sorted(mem.count_by_title.items()))
    return out_ | {"job_wall_s": r.wall_s, "rss_mb": mem.mb()}


def plan_windows(plan: str) -> tuple[list[dict], dict[str, Any]]:
    """The plan's windows (the closest S1 per window, as eoforge keeps) and each item's output grid."""
    from eoforge.plan.io import iter_plan_batches
    from eoforge.predict.grid import item_grid, window_origin

    best: dict[str, dict] = {}
    for batch in iter_plan_batches(plan):
        for r in batch.to_pylist():
            if r["chip_id"] not in best or r["dt_days"] < best[r["chip_id"]]["dt_days"]:
                best[r["chip_id"]] = r
    rows = [best[k] for k in sorted(best)]
    grids = {}
    for item in sorted({r["s2_item"] for r in rows}):
        mine = [r for r in rows if r["s2_item"] == item]
        origins = np.array([window_origin(r["chip_id"])[1:] for r in mine], dtype=np.int64)
        grids[item] = item_grid(item, mine[0]["crs"], mine[0]["transform"], origins, WINDOW, WINDOW - OVERLAP)
    return rows, grids


def extent(g: Any) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) the item's windows cover."""
    return g.x0 + g.first_col * g.res, g.y0 - g.rows * g.res, g.x0 + g.cols * g.res, g.y0 - g.first_row * g.res


def km2(grids: dict[str, Any]) -> float:
    return sum(g.rows * g.cols * g.res**2 for g in grids.values()) / 1e6


def put(maps: dict[str, np.ndarray], grids: dict[str, Any], item: str, row: int, col: int, cls: int) -> None:
    """One window's class into its centre block (``ItemGrid.block``) of the item's full-size map."""
    r0, c0, r1, c1 = grids[item].block(row, col)
    item_map(maps, grids[item])[r0:r1, c0:c1] = cls


def item_map(maps: dict[str, np.ndarray], g: Any) -> np.ndarray:
    """The item's full-size class map in ``maps``, made (all nodata, 255) on first use."""
    if g.item not in maps:
        maps[g.item] = np.full((g.rows, g.cols), 255, np.uint8)
    return maps[g.item]


def put_own_grid(maps: dict[str, np.ndarray], grids: dict[str, Any], bounds: list[float], cls: int) -> bool:
    """Hand stitching for a sampler with its own grid (TorchGeo's): one window's class into its centre block.

    The window goes to the item it overlaps most (its last row and column may run past the item's edge).
    Its block is the centre ``stride`` square; on a side where the window reaches the item's extent, the
    block reaches it too, so a regular grid's blocks tile the extent whatever pixel the grid starts on
    (``GridGeoSampler`` starts at each item's bottom-left corner, eoforge's plan at its top-left). False when
    the window meets no item.

    Args:
        bounds: the window's ``[xmin, xmax, ..., ymin, ymax, ...]`` as TorchGeo's ``sample["bounds"]``, metres.
    """

    def overlap(g: Any) -> float:
        e = extent(g)
        return max(0.0, min(bounds[1], e[2]) - max(bounds[0], e[0])) * max(
            0.0, min(bounds[4], e[3]) - max(bounds[3], e[1])
        )

    g = max(grids.values(), key=overlap)
    if overlap(g) <= 0:
        return False
    row, col = round((g.y0 - bounds[4]) / g.res), round((bounds[0] - g.x0) / g.res)
    spans = [  # per axis: the centre block, out to the extent on a side the window reaches
        (first if start <= first else start + g.margin, end if start + g.size >= end else start + g.margin + g.stride)
        for start, first, end in ((row, g.first_row, g.rows), (col, g.first_col, g.cols))
    ]
    (r0, r1), (c0, c1) = spans
    item_map(maps, g)[r0:r1, c0:c1] = cls
    return True


def write_maps(maps: dict[str, np.ndarray], grids: dict[str, Any], out: Path) -> None:
    import rasterio
    from rasterio.transform import Affine

    out.mkdir(parents=True, exist_ok=True)
    for item, arr in maps.items():
        g = grids[item]
        profile = {"driver": "GTiff", "height": arr.shape[0], "width": arr.shape[1], "count": 1, "dtype": "uint8"}
        profile |= {"crs": g.crs, "transform": Affine(*g.transform(0, 0)), "nodata": 255, "compress": "deflate"}
        with rasterio.open(out / f"{item}.tif", "w", **profile) as dst:
            dst.write(arr, 1)


def run_naive(plan: str, mlflow_url: str, uri: str, out: Path) -> tuple[dict, dict]:
    import torch
    from eoforge.data.chip import read_chip
    from eoforge.predict.grid import window_origin

    t0 = time.perf_counter()
    model = load_model(mlflow_url, uri)
    rows, grids = plan_windows(plan)
    maps: dict[str, np.ndarray] = {}
    batch: list[tuple[str, Any]] = []
    for i, row in enumerate(rows):
        chip = read_chip(row)  # every band file opened, read and closed for this one window
        if chip.valid_fraction >= MIN_VALID:
            batch.append((row["chip_id"], chip))
        if batch and (len(batch) == BATCH or i == len(rows) - 1):
            s1 = torch.from_numpy(np.stack([c.s1 for _, c in batch]))
            s2 = torch.from_numpy(np.stack([c.s2 for _, c in batch]))
            with torch.inference_mode():
                classes = model(s1, s2).argmax(1).tolist()
            for (chip_id, _), cls in zip(batch, classes, strict=True):
                put(maps, grids, *window_origin(chip_id), cls)
            batch.clear()
    write_maps(maps, grids, out)
    return {"wall_s": time.perf_counter() - t0, "km2": km2(grids), "windows": len(rows)}, maps


def run_torchgeo(plan: str, mlflow_url: str, uri: str, out: Path, workers: int) -> tuple[dict, dict, str]:
    import shapely
    import torch
    from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
    from eoforge.catalog.assets import gdal_path
    from eoforge.data.normalize import S1_DB_MEAN, S1_DB_STD, S2_L2A_MEAN, S2_L2A_STD
    from pyproj import CRS
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    class DemoS2(RasterDataset):
        filename_glob = "B02.tif"  # the index takes the 10 m band's footprint (60 m bands reach past it)
        filename_regex = r"^(?P<band>B\d[\dA])\.tif$"
        separate_files, all_bands = True, tuple(S2_BAND_NAMES)

    class DemoS1(RasterDataset):
        filename_glob, filename_regex = "vv.tif", r"^(?P<band>v[vh])\.tif$"
        separate_files, all_bands = True, tuple(S1_BAND_NAMES)

    t0 = time.perf_counter()
    model = load_model(mlflow_url, uri)
    rows, grids = plan_windows(plan)  # the items, their extents (roi) and output grids only
    crs = CRS.from_user_input(str(rows[0]["crs"]))
    s2_dirs = sorted({os.path.dirname(gdal_path(json.loads(str(r["s2_assets"]))["B02"])) for r in rows})
    s1_dirs = sorted({os.path.dirname(gdal_path(json.loads(str(r["s1_assets"]))["vv"])) for r in rows})
    ds = DemoS2(s2_dirs, crs=crs, res=10.0) & DemoS1(s1_dirs, crs=crs, res=10.0)
    roi = shapely.union_all([shapely.box(*extent(g)) for g in grids.values()])
    with warnings.catch_warnings():  # 0.10 deprecates it for GriddedPatchSampler; the brief names it
        warnings.simplefilter("ignore", DeprecationWarning)
        sampler = GridGeoSampler(ds, size=WINDOW, stride=WINDOW - OVERLAP, roi=roi)
    loader = DataLoader(ds, sampler=sampler, batch_size=BATCH, num_workers=workers, collate_fn=stack_samples)
    m2, s2d, m1, s1d = (
        torch.as_tensor(a)[None, :, None, None] for a in (S2_L2A_MEAN, S2_L2A_STD, S1_DB_MEAN, S1_DB_STD)
    )
    maps: dict[str, np.ndarray] = {}
    n = outside = 0
    for sample in loader:
        img = sample["image"].float()
        s2, s1 = img[:, :12], img[:, 12:14]
        s2n = torch.where(s2 > 0, (s2 - m2) / s2d, 0.0)  # S2 nodata 0
        s1n = torch.where(torch.isfinite(s1) & (s1 > -9000), (s1 - m1) / s1d, 0.0)  # S1 nodata -9999
        with torch.inference_mode():
            classes = model(s1n, s2n).argmax(1).tolist()
        for b, cls in zip(sample["bounds"].double().tolist(), classes, strict=True):  # [xmin, xmax, xres, ymin, ymax..]
            outside += not put_own_grid(maps, grids, b, cls)
        n += len(classes)
    write_maps(maps, grids, out)
    note = (
        "S2 12 bands (10/20/60 m COGs, separate_files, resampled to 10 m by TorchGeo) & S1 vv/vh "
        "(EPSG:4326 0.0001 deg, warped to the S2 UTM grid at 10 m); no SCL cloud mask, nodata -> 0; "
        f"GridGeoSampler windows {n} vs plan {len(rows)} (its grid starts at each item's bottom-left corner; "
        f"{outside} meeting no item, run but not stitched; centre blocks stitched by hand); "
        f"DataLoader workers {workers}"
    )
    return {"wall_s": time.perf_counter() - t0, "km2": km2(grids), "windows": n}, maps, note


def agreement(eo_out: Path, grids: dict[str, Any], maps: dict[str, np.ndarray]) -> tuple[float, int]:
    """Share of eoforge's mapped pixels where ``maps`` has the same class; distinct classes in eoforge's map."""
    import rasterio

    same = total = 0
    seen: set[int] = set()
    for tif in sorted(eo_out.glob("*/classes.tif")):
        g = grids[tif.parent.name.rsplit("-", 2)[0]]  # tile id: <item>-<row>-<col>
        with rasterio.open(tif) as src:
            eo, t = src.read(1), src.transform
        r0, c0 = round((g.y0 - t.f) / g.res), round((t.c - g.x0) / g.res)
        theirs = maps.get(g.item, np.full((g.rows, g.cols), 255, np.uint8))[
            r0 : r0 + eo.shape[0], c0 : c0 + eo.shape[1]
        ]
        mask = eo != 255
        seen |= set(np.unique(eo[mask]).tolist())
        same, total = same + int((eo[mask] == theirs[mask]).sum()), total + int(mask.sum())
    return round(same / max(total, 1), 4), len(seen)


def rate(r: dict, cores: int) -> float:
    return r["km2"] / (r["wall_s"] / 60) / cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--scenes", type=int, default=2, help="S2 scenes of the 1x area")
    ap.add_argument("--scale", type=int, default=10, help="the large eoforge run maps scenes x scale")
    ap.add_argument("--size-px", type=int, default=256, help="scene side, 10 m pixels")
    ap.add_argument("--out", default=".eoforge/bench-predict")
    ap.add_argument("--torchgeo-workers", type=int, default=1, help="DataLoader workers")
    ap.add_argument("--skip-torchgeo", action="store_true")
    ap.add_argument("--skip-10x-others", action="store_true", help="only eoforge maps the 10x area")
    args = ap.parse_args()
    out = Path(args.out).absolute()
    subs = (
        "cat",
        "home",
        "eoforge-warmup",
        "eoforge-1x",
        "eoforge-10x",
        "naive",
        "torchgeo",
        "naive-10x",
        "torchgeo-10x",
    )
    for sub in subs:
        shutil.rmtree(out / sub, ignore_errors=True)
    from eoforge.stack_secrets import ensure_ray_token

    # the stack runs with token auth: this process (a Ray client) uses its token, set before Ray loads
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ensure_ray_token(out / "home"))})
    import ray
    import torch
    from eoforge.demo.catalog import write_demo_catalog
    from eoforge.stack import StackPorts, down, up
    from eoforge.stack_secrets import client_env

    n1, n10, cores = args.scenes, args.scenes * args.scale, os.cpu_count() or 1
    say(f"demo catalog: {n10 + 1} scenes of {args.size_px} px (scene 0, cloudy, is not mapped)")
    cat = write_demo_catalog(out / "cat", scenes=n10 + 1, seed=0, dates_per_scene=1, size_px=args.size_px)
    items, home = list(cat.s2_item_ids[1:]), out / "home"
    state = up(home, StackPorts.random())
    os.environ.update({"MLFLOW_TRACKING_URI": state.mlflow_url, "EOFORGE_HOME": str(home), **client_env(home)})
    res: dict[str, dict] = {}
    agree: dict[str, Any] = {}
    classes_in: dict[str, int] = {}
    tg_note = "skipped (--skip-torchgeo)"
    try:
        ray.init(address=state.ray_address, log_to_driver=False)
        uri = register_model(state.mlflow_url)
        eo = partial(run_eoforge, cat, uri=uri, mlflow_url=state.mlflow_url, ray_pid=state.ray_pid)
        say(f"model {uri}; untimed eoforge warm-up on 1 scene (starts Ray's workers)")
        cold = eo(items[:1], out / "eoforge-warmup")["wall_s"]
        for key, n, sub in (("eoforge", n1, "eoforge-1x"), ("eoforge_10x", n10, "eoforge-10x")):
            res[key] = eo(items[:n], out / sub)
            say(f"eoforge on {n} scenes: {res[key]['wall_s']:.1f} s")
        for suffix in ("", "_10x") if not args.skip_10x_others else ("",):
            area = "10x" if suffix else "1x"
            plan = str(out / f"eoforge-{area}" / "plan.parquet")
            _, grids = plan_windows(plan)
            res[f"naive{suffix}"], maps = run_naive(
                plan, state.mlflow_url, uri, out / f"naive{suffix.replace('_', '-')}"
            )
            agree[f"naive{suffix}"], n_classes = agreement(out / f"eoforge-{area}", grids, maps)
            classes_in[area] = n_classes
            say(f"naive on {area}: {res[f'naive{suffix}']['wall_s']:.1f} s")
            if args.skip_torchgeo:
                continue
            try:
                import torchgeo  # noqa: F401
            except ImportError:
                tg_note = "torchgeo is not installed (pip install -e .[bench])"
                continue
            tg_out = out / f"torchgeo{suffix.replace('_', '-')}"
            res[f"torchgeo{suffix}"], maps, tg_note = run_torchgeo(
                plan, state.mlflow_url, uri, tg_out, args.torchgeo_workers
            )
            agree[f"torchgeo{suffix}"], _ = agreement(out / f"eoforge-{area}", grids, maps)
            say(f"torchgeo on {area}: {res[f'torchgeo{suffix}']['wall_s']:.1f} s")
    finally:
        ray.shutdown()
        down(home)
    small, big = res["eoforge"], res["eoforge_10x"]
    report: dict[str, Any] = {"bench": "predict", "scenes_1x": n1, "scenes_10x": n10, "size_px": args.size_px}
    report |= {"window_px": WINDOW, "overlap_px": OVERLAP, "batch": BATCH, "cores": cores}
    report |= {"ray_num_cpus": state.num_cpus, "torch_threads_in_process": torch.get_num_threads()}
    report["eoforge_cold_wall_s"] = round(cold, 2)
    report["contenders"] = {
        k: {f: round(v, 3) if isinstance(v, float) else v for f, v in r.items() if f != "rss_mb"}
        | {"km2_per_min_per_core": round(rate(r, cores), 3)}
        for k, r in res.items()
    }
    extra_s = big["wall_s"] - small["wall_s"]
    marginal = (big["km2"] - small["km2"]) / (extra_s / 60) / cores if extra_s > 0 else None
    report["eoforge_marginal_km2_per_min_per_core"] = round(marginal, 3) if marginal else None
    for other in ("naive", "torchgeo"):
        if other in res:
            report[f"ratio_vs_{other}"] = round(rate(small, cores) / rate(res[other], cores), 3)
            report[f"marginal_ratio_vs_{other}"] = round(marginal / rate(res[other], cores), 3) if marginal else None
        if f"{other}_10x" in res:
            report[f"ratio_vs_{other}_10x"] = round(rate(big, cores) / rate(res[f"{other}_10x"], cores), 3)
    report["agreement_with_eoforge"] = agree | {"classes_in_eoforge_map": classes_in["1x"]}
    report["torchgeo_note"] = tg_note
    (d0, w0, d1, w1, p1, l1), (e0, x0, e1, x1, p10, l10) = small["rss_mb"], big["rss_mb"]
    peaks = {"driver_1x": d1, "driver_10x": e1, "workers_1x": w1, "workers_10x": x1}
    peaks |= {"workers_pss_1x": p1, "workers_pss_10x": p10, "largest_uss_1x": l1, "largest_uss_10x": l10}
    starts = {"driver_1x": d0, "driver_10x": e0, "workers_1x": w0, "workers_10x": x0}
    report["peak_rss_mb"] = {k: round(v, 1) for k, v in peaks.items()}
    report["rss_at_start_mb"] = {k: round(v, 1) for k, v in starts.items()}
    report["rss_ratio_10x_vs_1x"] = {
        "driver": round(e1 / d1, 3),
        "workers": round(x1 / max(w1, 1e-9), 3),
        "workers_pss": round(p10 / max(p1, 1e-9), 3),
        "largest_worker_uss": round(l10 / max(l1, 1e-9), 3),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
