"""Predict driver: area -> windows plan -> Ray Data (read, infer) -> tiles of COGs -> STAC + MLflow.

Runs on the Ray driver (``jobs/predict.py``):

1. pins and checks the models (:func:`eoforge.predict.model.resolve_models`) before any read;
2. plans overlapping windows over the area with the planner of ``eoforge plan``
   (``<output>/plan.parquet``; its hash is the lineage);
3. cuts each S2 item's grid into output tiles (:mod:`eoforge.predict.grid`) and skips the tiles
   whose item and files are already there with matching checksums, model and plan (a rerun
   finishes an interrupted run without redoing work);
4. streams the other tiles' windows through reading tasks and the inference actor pool
   (:mod:`eoforge.predict.stream`), assembles each tile as its windows arrive and writes it
   (:mod:`eoforge.predict.tiles`) before the next ones pile up;
5. writes the Collection and records the run in MLflow.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.config import DataConfig
from eoforge.config.data import ChipGridConfig, GridSampling
from eoforge.config.predict import PredictConfig
from eoforge.errors import ConfigError
from eoforge.predict.grid import ItemGrid, blend_weights, item_grid, window_origin
from eoforge.progress import say
from eoforge.redact import redact


@dataclass(frozen=True)
class PredictResult:
    """What a predict job leaves behind."""

    run_id: str
    collection: str
    tiles: int
    written: int
    skipped: int
    windows: int
    nodata_windows: int  # too little valid input (clouds, a scene's edge): nodata by design
    failed_windows: int  # reads that failed (see the run's predict/window_errors.json)
    km2: float
    wall_s: float


def aoi_geometry(path: str) -> dict[str, Any]:
    """The union of a GeoJSON file's geometries (a geometry, Feature or FeatureCollection), lon/lat.

    Raises:
        ConfigError: the file is missing, not JSON, or holds no polygon.
    """
    import shapely
    from shapely.geometry import mapping, shape

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"aoi.geojson: {path} does not exist")
    try:
        doc = json.loads(p.read_text())
        feats = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
        geoms = [shape(f.get("geometry", f) if f.get("type") == "Feature" else f) for f in feats]
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise ConfigError(f"aoi.geojson: {path}: not a GeoJSON geometry, Feature or FeatureCollection: {exc}") from None
    union = shapely.union_all(geoms)
    if union.is_empty or union.area <= 0:
        raise ConfigError(f"aoi.geojson: {path}: no polygon with a positive area")
    return dict(mapping(union))


def data_config(cfg: PredictConfig, window_px: int) -> DataConfig:
    """The planner's config for the area: the catalog, the AOI and a grid of overlapping windows."""
    if cfg.overlap_px * 2 > window_px:
        raise ConfigError(f"overlap_px {cfg.overlap_px} must be at most half of the window ({window_px} px)")
    catalog = cfg.catalog.model_dump()
    if cfg.aoi.bbox is not None:
        catalog["bbox"] = cfg.aoi.bbox
    if cfg.aoi.geojson is not None:
        catalog["aoi"] = aoi_geometry(cfg.aoi.geojson)
    if cfg.aoi.datetime is not None:
        catalog["datetime"] = cfg.aoi.datetime
    if cfg.aoi.item_ids:
        catalog["s2_item_ids"] = list(cfg.aoi.item_ids)
    chips = ChipGridConfig(
        size_px=window_px,
        stride_px=window_px - cfg.overlap_px,
        resolution_m=10.0,
        sampling=GridSampling(cover_edges=True),  # windows flush with the items' bottom and right edges too
    )
    return DataConfig.model_validate(
        {"kind": "data", "catalog": catalog, "pairing": cfg.pairing.model_dump(), "chips": chips.model_dump()}
    )


@dataclass
class TilePlan:
    """The windows of one output tile: plan rows, and whether the tile is each window's home."""

    key: str
    grid: ItemGrid
    tile: tuple[int, int]
    rows: list[dict[str, Any]]
    home: list[bool]


def tile_id(item: str, tile: tuple[int, int]) -> str:
    """A tile's id: the item id (made path-safe) and the tile's row and column."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in item)
    return f"{safe}-{tile[0]:02d}-{tile[1]:02d}"


def plan_tiles(
    table: Any, tile_px: int, per_pixel: bool, class_products: bool, stride: int
) -> tuple[list[TilePlan], dict[str, Any]]:
    """Output tiles of every S2 item of a windows plan, in (item, row, col) order, and per-item facts.

    Args:
        table: the plan's rows (Arrow) with the reader's columns and ``s2_item``, ``s1_item``,
            ``s2_datetime``, ``dt_days``; one row per window (the closest S1 kept).
        tile_px: output tile side, pixels.
        per_pixel: some output is per pixel (segmentation, per-pixel embeddings): a window joins every
            tile its footprint meets, not only those its centre block meets.
        class_products: some per-pixel product is made (windows join the tiles their output meets;
            otherwise only their home tile).
        stride: the windows' step, pixels (window - overlap).

    Returns:
        (tiles, {item: {"grid", "datetime", "s1_items"}}).
    """
    from eoforge.predict.stream import READ_COLUMNS

    rows = table.sort_by([("chip_id", "ascending"), ("dt_days", "ascending")]).to_pylist()
    by_item: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for row in rows:
        if row["chip_id"] not in seen:  # one S1 partner per window: the closest in time
            seen.add(row["chip_id"])
            by_item.setdefault(row["s2_item"], []).append(row)
    tiles: list[TilePlan] = []
    items: dict[str, Any] = {}
    for item in sorted(by_item):
        windows = by_item[item]
        origins = np.array([window_origin(r["chip_id"])[1:] for r in windows], dtype=np.int64)
        first = windows[0]
        size = int(first["size_px"])
        grid = item_grid(item, first["crs"], first["transform"], origins, size, stride)
        items[item] = {
            "grid": grid,
            "datetime": first["s2_datetime"],
            "s1_items": sorted({r["s1_item"] for r in windows}),
        }
        members: dict[tuple[int, int], list[tuple[int, bool]]] = {}
        for i, (r, c) in enumerate(origins.tolist()):
            home = grid.home(r, c, tile_px)
            touched = set(grid.touched(r, c, tile_px, per_pixel)) if class_products else set()
            for t in sorted(touched | {home}):
                members.setdefault(t, []).append((i, t == home))
        for t in sorted(members):
            sel = members[t]
            reader_rows = [{k: windows[i][k] for k in READ_COLUMNS} for i, _ in sel]
            tiles.append(TilePlan(tile_id(item, t), grid, t, reader_rows, [h for _, h in sel]))
    return tiles, items


def weights_for(cfg: PredictConfig, task: str | None, size: int) -> np.ndarray | None:
    """A window's per-pixel weight for segmentation (blending); None for per-window outputs (their block)."""
    return blend_weights(size, cfg.blend) if task == "segmentation" else None


def run_predict(cfg: PredictConfig) -> PredictResult:
    """Run one predict job end to end (see module docstring)."""
    from eoforge.predict.tiles import TileWriter, finish_collection
    from eoforge.tracking.runs import resolve_tracking_uri

    t0 = time.perf_counter()
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    from eoforge.predict.model import resolve_models

    models = resolve_models(uri, cfg.model, cfg.embedding_model, list(cfg.products), cfg.window_px, cfg.embeddings.mode)
    say(
        f"predict: {', '.join(cfg.products)} with "
        + ", ".join(f"{r.asked} -> {r.uri}" for r in models.refs)
        + f"; windows {models.window_px} px, overlap {cfg.overlap_px} px"
    )
    plan_uri, plan_hash, table, pairs = _plan(cfg, models.window_px)
    task = models.task.task if models.task else None
    pixel_emb = "embeddings" in cfg.products and cfg.embeddings.mode == "pixel"
    per_pixel = task == "segmentation" or pixel_emb  # some output fills the window's whole footprint
    class_products = bool({"classes", "probabilities"} & set(cfg.products)) or pixel_emb
    stride = models.window_px - cfg.overlap_px
    tiles, items = plan_tiles(table, cfg.tile_px, per_pixel, class_products, stride)
    del table
    from eoforge.tracking.job_run import job_run

    lead = models.task or models.embedding
    assert lead is not None  # the config asks for a model for every product
    lineage_uri = lead.uri
    with job_run(uri, cfg.mlflow.experiment, cfg.run.name, "predict", cfg.model_dump(mode="json"), plan_hash) as run:
        run.tag(eoforge_model_uri=lineage_uri, eoforge_output=cfg.output)
        if lead.sha256:
            run.tag(eoforge_model_sha256=lead.sha256)
        writer = TileWriter(cfg, models, uri, plan_hash, run.run_id, items, pairs)
        pending = [t for t in tiles if not writer.complete(t)]
        say(f"{len(tiles)} output tiles over {len(items)} S2 items; {len(tiles) - len(pending)} already written")
        counts = _predict_tiles(cfg, models, uri, pending, writer, task)
        if counts.failed:
            say(f"{counts.failed} of {counts.windows} windows failed to read (nodata there); first: {counts.errors[0]}")
        coll = finish_collection(cfg, writer, models)
        wall = time.perf_counter() - t0
        km2 = float(sum(t.grid.res**2 * np.prod(t.grid.tile_window(*t.tile, cfg.tile_px)[2:]) for t in tiles) / 1e6)
        run.metrics(
            {
                "predict/tiles": len(tiles),
                "predict/tiles_written": len(pending),
                "predict/tiles_skipped": len(tiles) - len(pending),
                "predict/windows": counts.windows,
                "predict/windows_nodata": counts.nodata,
                "predict/windows_failed": counts.failed,
                "predict/km2": km2,
                "predict/wall_s": wall,
                "predict/km2_per_min": km2 / max(wall / 60, 1e-9),
            }
        )
        run.tag(eoforge_collection=coll, eoforge_plan=plan_uri)
        run.client.log_dict(run.run_id, json.loads(writer.read(coll) or b"{}"), "predict/collection.json")
        if counts.failed:
            errors = {"failed": counts.failed, "first": counts.errors}
            run.client.log_dict(run.run_id, errors, "predict/window_errors.json")
        _tag_model_versions(run.client, models, coll)
    print(f"predictions: {coll}", flush=True)  # the line users and make demo look for
    return PredictResult(
        run.run_id,
        coll,
        len(tiles),
        len(pending),
        len(tiles) - len(pending),
        counts.windows,
        counts.nodata,
        counts.failed,
        km2,
        wall,
    )


def _plan(cfg: PredictConfig, window_px: int) -> tuple[str, str, Any, list[Any]]:
    """Plan the windows (``<output>/plan.parquet``); returns (uri, hash, Arrow rows, pairs)."""
    import pyarrow as pa

    from eoforge.plan.build import build_plan
    from eoforge.plan.io import iter_plan_batches
    from eoforge.predict.stream import READ_COLUMNS

    dcfg = data_config(cfg, window_px)
    pairs: list[Any] = []
    plan_uri = f"{cfg.output.rstrip('/')}/plan.parquet"
    plan_hash, n = build_plan(dcfg, plan_uri, pairs_out=pairs)
    cols = [*READ_COLUMNS, "s2_item", "s1_item", "s2_datetime", "dt_days"]
    table = pa.Table.from_batches(list(iter_plan_batches(plan_uri, cols)))
    say(f"plan {plan_uri}: {n} windows over {len(pairs)} S1/S2 pairs, hash {plan_hash[:12]}")
    return plan_uri, plan_hash, table, pairs


@dataclass
class WindowCounts:
    """The windows a run streamed: how many, how many gave nodata by design, how many failed to read.

    ``errors`` keeps the first :data:`KEPT_ERRORS` read failures' messages, redacted (no signed URL).
    """

    windows: int = 0
    nodata: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, ok: bool, read_failed: bool, error: str) -> None:
        """Count one window (``ok``: predicted; ``read_failed``: its read raised; ``error``: why not ok)."""
        self.windows += 1
        if read_failed:
            self.failed += 1
            if len(self.errors) < KEPT_ERRORS:
                self.errors.append(redact(error))
        elif not ok:
            self.nodata += 1


#: Read-failure messages a run keeps (in its MLflow run and the job log); the count covers all.
KEPT_ERRORS = 20


def _predict_tiles(
    cfg: PredictConfig, models: Any, uri: str, pending: list[TilePlan], writer: Any, task: str | None
) -> WindowCounts:
    """Stream the pending tiles' windows, assemble and write each tile as it completes."""
    counts = WindowCounts()
    if not pending:
        return counts
    import ray

    from eoforge.predict.assemble import TileAccumulator
    from eoforge.predict.stream import read_tasks, window_outputs
    from eoforge.ray_node import init_ray

    if not ray.is_initialized():
        init_ray(log_to_driver=True)
    by_key = {t.key: t for t in pending}
    tasks = [task_ for t in pending for task_ in read_tasks(t.key, t.rows, t.home)]
    accs: dict[str, TileAccumulator] = {}
    done = 0
    want_emb = "embeddings" in cfg.products
    n_classes = len(models.task.card.get("classes", [])) if models.task else 0
    pixel_emb = want_emb and cfg.embeddings.mode == "pixel"
    for block in window_outputs(tasks, models.to_dict(), uri, cfg):
        for i in range(len(block["tile"])):
            key = str(block["tile"][i])
            acc = accs.get(key)
            if acc is None:
                t = by_key[key]
                w = weights_for(cfg, task, t.grid.size)
                emb_w = blend_weights(t.grid.size, cfg.blend) if pixel_emb else None
                acc = accs[key] = TileAccumulator(
                    t.grid, t.tile, cfg.tile_px, len(t.rows), w, want_emb, n_classes, emb_w
                )
            _, r, c = window_origin(str(block["chip_id"][i]))
            ok = bool(block["ok"][i])
            counts.add(ok, bool(block["read_failed"][i]), str(block["error"][i]))
            acc.add(
                str(block["chip_id"][i]),
                r,
                c,
                bool(block["home"][i]),
                ok,
                block["probs"][i] if "probs" in block else None,
                block["valid_any"][i],
                block["embedding"][i] if "embedding" in block else None,
                block["embedding_map"][i] if "embedding_map" in block else None,
            )
            if acc.done:
                writer.write(by_key[key], acc.products(list(cfg.products)))
                del accs[key]
                done += 1
                say(f"[{done}/{len(pending)}] tile {key}: {acc.valid_windows}/{acc.expected} windows with valid input")
    if accs:
        raise RuntimeError(f"predict: {len(accs)} tiles did not receive all their windows: {sorted(accs)[:5]}")
    return counts


def _tag_model_versions(client: Any, models: Any, collection_uri: str) -> None:
    """Add the collection to each model version's ``eoforge.collections`` tag (a JSON list)."""
    for ref in models.refs:
        if not ref.registered:
            continue  # a saved model folder: no registry version to tag
        mv = client.get_model_version(ref.name, ref.version)
        made = json.loads((mv.tags or {}).get("eoforge.collections", "[]"))
        if collection_uri not in made:
            made.append(collection_uri)
        client.set_model_version_tag(ref.name, ref.version, "eoforge.collections", json.dumps(made)[:5000])
