"""Writing output tiles: the product files, then the tile's STAC Item, then (at the end) the Collection.

Layout under ``output`` (a folder, ``s3://`` or ``gs://``)::

    collection.json
    plan.parquet                       the windows plan (its hash is in every item)
    <tile id>/<tile id>.json           the tile's Item, written last
    <tile id>/classes.tif              uint8 class map with a colormap (nodata 255)
    <tile id>/probabilities.tif        uint8 percent per class (nodata 255)
    <tile id>/embeddings.tif           int8 per-window embeddings on the coarse grid (nodata -128)
    <tile id>/embeddings.parquet       one row per window: chip id, footprint, embedding (float32)

The item is published after its files, so an item's presence means its files are whole; a
rerun trusts a tile only when its item names the same model version and plan and every file's
SHA-256 matches the item's ``file:checksum``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.predict.assemble import CLASS_NODATA, EMB_NODATA, PROB_NODATA, PROB_SCALE, TileProducts
from eoforge.predict.cog import colormap_of, file_info, publish, read_bytes, sha256_multihash, write_cog
from eoforge.predict.stac_items import (
    MEDIA,
    classes_field,
    collection,
    mlm_fields,
    model_asset,
    public_href,
    tile_item,
)
from eoforge.tracking.registry import WEIGHTS_FILE


class TileWriter:
    """Writes tiles of one predict run and remembers every complete tile's Item.

    Args:
        cfg: the job's PredictConfig.
        models: the pinned :class:`~eoforge.predict.model.PredictModels`.
        tracking_uri: the registry (the model asset's href is the version's source).
        plan_hash, run_id: lineage.
        items: per S2 item: ``grid``, ``datetime``, ``s1_items`` (:func:`eoforge.predict.job.plan_tiles`).
        pairs: the plan's S1/S2 pairs (their STAC items' hrefs become ``derived_from`` links).
    """

    def __init__(
        self,
        cfg: Any,
        models: Any,
        tracking_uri: str,
        plan_hash: str,
        run_id: str,
        items: dict[str, Any],
        pairs: list[Any],
    ) -> None:
        from eoforge.storage import is_remote

        self.cfg, self.models, self.items = cfg, models, items
        self.root = cfg.output.rstrip("/")
        self.products = list(cfg.products)
        lead = models.task or models.embedding
        self.lineage = {"model_uri": lead.uri, "model_sha256": lead.sha256, "plan_hash": plan_hash, "run_id": run_id}
        self.hrefs: dict[str, str] = {}
        for pair in pairs:
            for it in (pair.s2, pair.s1):
                self.hrefs[it.id] = public_href(it.get_self_href() or it.id)
        card = lead.card
        self.classes: list[str] = list(models.task.card.get("classes", [])) if models.task else []
        self.colours = colormap_of(len(self.classes)) if self.classes else {}
        model_desc = {
            "uri": lead.uri,
            "name": None if lead.registered else f"{lead.name} {lead.version}",
            "task": lead.task,
            "backbone": card.get("backbone"),
            "normalize": models.normalize,
        }
        self.mlm = mlm_fields(model_desc, models.window_px, self.classes or None)
        if lead.registered:
            from mlflow import MlflowClient

            source = MlflowClient(tracking_uri).get_model_version(lead.name, lead.version).source
        else:
            source = lead.uri  # the saved model folder, redacted
        weights = f"{source.rstrip('/')}/{WEIGHTS_FILE}" if source else lead.uri
        self.model_asset = model_asset(public_href(weights), lead.uri)
        self.written: dict[str, dict[str, Any]] = {}
        base = None if is_remote(self.root) else Path(self.root)
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))

    # ------------------------------------------------------------------ paths
    def uri(self, key: str, name: str) -> str:
        """Where a tile's file goes."""
        return f"{self.root}/{key}/{name}"

    def read(self, uri: str) -> bytes | None:
        """A published file's bytes (None when missing)."""
        return read_bytes(uri)

    def expected_assets(self) -> set[str]:
        """The file assets every tile of this run carries."""
        keys = set(self.products)
        if "embeddings" in keys:
            keys.add("embedding_vectors")
        return keys

    # ------------------------------------------------------------------ resume
    def complete(self, tile: Any) -> bool:
        """True when the tile's item and files are there and match (then the item is kept for the collection)."""
        raw = self.read(self.uri(tile.key, f"{tile.key}.json"))
        if raw is None:
            return False
        try:
            item = json.loads(raw)
            props = item["properties"]
        except (ValueError, KeyError):
            return False
        if (
            props.get("eoforge:model_uri") != self.lineage["model_uri"]
            or props.get("eoforge:model_sha256") != self.lineage["model_sha256"]
            or props.get("eoforge:plan_hash") != self.lineage["plan_hash"]
        ):
            return False
        files = {k: a for k, a in item.get("assets", {}).items() if "file:checksum" in a}
        if set(files) != self.expected_assets():
            return False
        for asset in files.values():
            data = self.read(self.uri(tile.key, asset["href"].removeprefix("./")))
            if data is None or sha256_multihash(data) != asset["file:checksum"]:
                return False
        self.written[tile.key] = item
        return True

    # ------------------------------------------------------------------ write
    def write(self, tile: Any, products: TileProducts) -> dict[str, Any]:
        """Write a tile's files, then its item (validated against the shipped schemas); returns the item."""
        from eoforge.predict.stac_validate import validate_stac

        grid = tile.grid
        r0, c0, h, w = grid.tile_window(*tile.tile, self.cfg.tile_px)
        transform = grid.transform(r0, c0)
        folder = self.staging / tile.key
        folder.mkdir(parents=True, exist_ok=True)
        assets: dict[str, dict[str, Any]] = {}
        if products.classes is not None:
            path = folder / "classes.tif"
            write_cog(products.classes[None], path, grid.crs, transform, CLASS_NODATA, self.colours or None, ["class"])
            assets["classes"] = {
                "href": "./classes.tif",
                "type": MEDIA["cog"],
                "title": "class map",
                "roles": ["data"],
                "raster:bands": [{"data_type": "uint8", "nodata": CLASS_NODATA, "spatial_resolution": grid.res}],
                "classification:classes": classes_field(self.classes, self.colours),
            }
        if products.probabilities is not None:
            path = folder / "probabilities.tif"
            k = products.probabilities.shape[0]
            names = self.classes or [f"class {i}" for i in range(k)]
            write_cog(
                products.probabilities,
                path,
                grid.crs,
                transform,
                PROB_NODATA,
                None,
                names,
                (np.full(k, PROB_SCALE), np.zeros(k)),
            )
            assets["probabilities"] = {
                "href": "./probabilities.tif",
                "type": MEDIA["cog"],
                "title": "class probabilities, percent",
                "roles": ["data"],
                "raster:bands": [
                    {
                        "name": n,
                        "data_type": "uint8",
                        "nodata": PROB_NODATA,
                        "scale": PROB_SCALE,
                        "offset": 0.0,
                        "spatial_resolution": grid.res,
                    }
                    for n in names
                ],
            }
        if products.embeddings is not None:
            self._write_embeddings(tile, products, folder, assets)
        for asset in assets.values():
            local = folder / asset["href"].removeprefix("./")
            size, checksum = file_info(local)
            asset["file:size"], asset["file:checksum"] = size, checksum
        for asset in assets.values():
            publish(folder / asset["href"].removeprefix("./"), self.uri(tile.key, asset["href"].removeprefix("./")))
        assets["model"] = dict(self.model_asset)
        meta = self.items[grid.item]
        geometry, bbox = _footprint(grid.crs, transform, h, w)
        sources = [("derived_from", self.hrefs.get(grid.item, grid.item))]
        sources += [("derived_from", self.hrefs.get(s1, s1)) for s1 in meta["s1_items"]]
        geo = {
            "geometry": geometry,
            "bbox": bbox,
            "datetime": _iso(meta["datetime"]),
            "crs": grid.crs,
            "shape": (h, w),
            "transform": transform,
        }
        item = tile_item(
            tile.key,
            geo,
            assets,
            sources,
            self.lineage,
            self.mlm,
            self.cfg.collection_id,
        )
        validate_stac(item)
        local_item = folder / f"{tile.key}.json"
        local_item.write_text(json.dumps(item, indent=1))
        publish(local_item, self.uri(tile.key, f"{tile.key}.json"))
        shutil.rmtree(folder, ignore_errors=True)
        self.written[tile.key] = item
        return item

    def _write_embeddings(self, tile: Any, products: TileProducts, folder: Path, assets: dict[str, Any]) -> None:
        import geopandas as gpd
        import shapely

        grid = tile.grid
        emb = products.embeddings
        assert emb is not None and products.emb_scale is not None and products.emb_offset is not None
        if self.cfg.embeddings.mode == "pixel":
            r0, c0, _, _ = grid.tile_window(*tile.tile, self.cfg.tile_px)
            transform, res = grid.transform(r0, c0), grid.res
            title = f"embeddings: a {emb.shape[0]}-d vector per {res:g} m pixel (feature maps, blended), int8"
        else:
            k_r0, k_c0, _, _ = grid.coarse_window(*tile.tile, self.cfg.tile_px)
            transform, res = grid.coarse_transform(k_r0, k_c0), grid.stride * grid.res
            title = f"embeddings: one {emb.shape[0]}-d vector per {res:g} m window centre, int8"
        write_cog(
            emb,
            folder / "embeddings.tif",
            grid.crs,
            transform,
            EMB_NODATA,
            None,
            None,
            (products.emb_scale, products.emb_offset),
        )
        assets["embeddings"] = {
            "href": "./embeddings.tif",
            "type": MEDIA["cog"],
            "title": title,
            "roles": ["data"],
            "raster:bands": [
                {
                    "data_type": "int8",
                    "nodata": EMB_NODATA,
                    "scale": float(s),
                    "offset": float(o),
                    "spatial_resolution": res,
                }
                for s, o in zip(products.emb_scale, products.emb_offset, strict=True)
            ],
        }
        ids, vec, pos = products.vectors or ([], np.zeros((0, 1)), np.zeros((0, 2)))
        boxes = []
        for r, c in pos.tolist():
            x0, y0 = grid.x0 + c * grid.res, grid.y0 - r * grid.res
            boxes.append(shapely.box(x0, y0 - grid.size * grid.res, x0 + grid.size * grid.res, y0))
        frame = gpd.GeoDataFrame(
            {"chip_id": ids, "s2_item": [grid.item] * len(ids), "embedding": [v.astype(np.float32) for v in vec]},
            geometry=boxes,
            crs=grid.crs,
        ).to_crs("EPSG:4326")
        frame.to_parquet(folder / "embeddings.parquet")
        assets["embedding_vectors"] = {
            "href": "./embeddings.parquet",
            "type": MEDIA["parquet"],
            "title": "per-window embeddings (float32) with window footprints, GeoParquet",
            "roles": ["data"],
        }


def _iso(value: Any) -> str:
    text = str(value)
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else text if text.endswith("Z") else f"{text}Z"


def _footprint(crs: str, transform: tuple[float, ...], h: int, w: int) -> tuple[dict[str, Any], list[float]]:
    """A tile's footprint (lon/lat polygon, densified) and bbox."""
    import shapely
    from shapely.geometry import mapping

    from eoforge.plan.area import to_lonlat

    a, _, c, _, e, f = transform[:6]
    box = shapely.segmentize(shapely.box(c, f + e * h, c + a * w, f), max(abs(a) * w, abs(e) * h) / 16)
    tr = to_lonlat(crs)
    ll = shapely.transform(box, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return json.loads(json.dumps(mapping(ll))), [float(v) for v in ll.bounds]  # tuples -> JSON arrays


def finish_collection(cfg: Any, writer: TileWriter, models: Any) -> str:
    """Write ``collection.json`` over every complete tile (validated); returns its URI."""
    from eoforge.predict.stac_validate import validate_stac

    items = list(writer.written.values())
    if not items:
        raise RuntimeError("predict: no tile was written")
    lead = models.task or models.embedding
    coll = collection(
        cfg.collection_id,
        items,
        f"eoforge predictions ({', '.join(cfg.products)}) of {lead.uri}",
        writer.mlm,
        lead.uri,
    )
    validate_stac(coll)
    local = writer.staging / "collection.json"
    local.write_text(json.dumps(coll, indent=1))
    dest = f"{writer.root}/collection.json"
    publish(local, dest)
    shutil.rmtree(writer.staging, ignore_errors=True)
    return dest
