"""A synthetic, self-contained STAC catalog of co-located Sentinel-2, Sentinel-1 and labels.

:func:`write_demo_catalog` writes, under ``out``:

- ``catalog.json``: a pystac Catalog ``eoforge-demo`` saved ABSOLUTE_PUBLISHED (every link
  absolute), with three child collections ``sentinel-2-l2a``, ``sentinel-1-grd`` and
  ``dfc-labels`` (``out/<collection>/collection.json``, items under it);
- ``collections.ndjson`` and ``items.ndjson``: the same JSON, one object per line, ready for
  ``pypgstac load collections|items`` (no NaN anywhere);
- ``data/<collection>/<item_id>/<asset>.tif``: Cloud-Optimized GeoTIFFs, referenced by
  absolute ``file:///`` hrefs.

Scene k is ``size_px`` × ``size_px`` pixels at 10 m in EPSG:32632 near 9.3°E 45°N (see
:mod:`eoforge.demo.synth`); each has ``dates_per_scene`` Sentinel-2 L2A acquisitions
(12 bands at native 10/20/60 m, uint16 reflectance ×10000, plus SCL) within one season
(:func:`labelled_season`: every four consecutive scenes cover the four), one Sentinel-1 GRD
acquisition 0-2 days from each (VV/VH float32 dB on a 0.0001° lon/lat grid with 2-3 corner
reflectors) and one DFC2020 label map (uint8 classes 0-7 on the 10 m grid). Same seed, same
bytes: nothing depends on the clock.

Conventions worth knowing:

- an S1 acquisition is its S2 acquisition shifted by a whole number of days (0, +2, -1, +1,
  -2, cycled over the S2 acquisitions), same time of day, so pairing tolerances hit their
  boundaries exactly;
- asset hrefs are ``"file://" + absolute path`` without %-escaping (GDAL does not decode it);
- ``eo:cloud_cover`` is the percent of SCL (20 m) pixels with codes 3, 8 or 9;
- with ``size_px`` not a multiple of 6 the 60 m bands (and with odd ``size_px`` the 20 m ones)
  reach past the scene's right and bottom edges (ceil), sharing its upper-left corner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac

from eoforge.bands import DFC_CLASSES, DFC_IGNORE, S1_BANDS, S2_BANDS, S2_SCL_ASSET
from eoforge.demo.cog import Grid, write_cog
from eoforge.demo.stac_writer import (
    EO,
    LABEL,
    PROJ,
    RASTER,
    SAR,
    SAT,
    collection_of,
    eo_band,
    file_href,
    new_asset,
    new_item,
    proj_fields,
    save_catalog,
)
from eoforge.demo.synth import Scene, make_scene, render_s1, render_s2, stream
from eoforge.demo.world import World
from eoforge.errors import ConfigError
from eoforge.progress import say

S2_COLLECTION, S1_COLLECTION, LABEL_COLLECTION = "sentinel-2-l2a", "sentinel-1-grd", "dfc-labels"
CATALOG_ID = "eoforge-demo"
#: First acquisition day of a spring scene; scene k starts k*2 days later (plus its season's offset),
#: then every 10, 15 or 20 days.
START = datetime(2024, 5, 1, 10, 20, 0, tzinfo=UTC)
#: Days from :data:`START` to each season's first acquisitions: spring (1 May), summer (16 July),
#: autumn (15 October), winter (15 January). SEN12MS's ROIs are each imaged in one of the four
#: meteorological seasons (ROIs1158_spring, ROIs1868_summer, ROIs1970_fall, ROIs2017_winter).
SEASON_OFFSETS_DAYS = (0, 76, 167, 259)
SEASON_NAMES = ("spring", "summer", "autumn", "winter")
#: S1 minus S2 acquisition time, whole days, cycled over all S2 acquisitions in order.
S1_OFFSETS_DAYS = (0, 2, -1, 1, -2)
_COG = pystac.MediaType.COG
_TAG_DATES, _TAG_SEASONS = 9, 10


@dataclass(frozen=True)
class DemoCatalog:
    """What :func:`write_demo_catalog` wrote.

    Attributes:
        root: the output folder (absolute).
        catalog_json: ``root/catalog.json``.
        collections_ndjson: ``root/collections.ndjson`` (3 lines).
        items_ndjson: ``root/items.ndjson`` (S2, then S1, then label items).
        s2_item_ids: ids of the Sentinel-2 items, scene by scene, in time order.
        s1_item_ids: ids of the Sentinel-1 items, in the same order (one per S2 item).
        label_item_ids: ids of the label items, one per scene.
        bbox: lon/lat bounds (west, south, east, north) of all items, degrees.
        datetime_range: ``start/end`` RFC 3339 interval holding every item.
    """

    root: Path
    catalog_json: Path
    collections_ndjson: Path
    items_ndjson: Path
    s2_item_ids: tuple[str, ...]
    s1_item_ids: tuple[str, ...]
    label_item_ids: tuple[str, ...]
    bbox: tuple[float, float, float, float]
    datetime_range: str


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _proj(grid: Grid) -> dict:
    return proj_fields(grid.shape, grid.proj_transform())


def _asset(path: Path, title: str, roles: list[str], fields: dict) -> pystac.Asset:
    """A COG asset at ``path`` (href: :func:`~eoforge.demo.stac_writer.file_href`)."""
    return new_asset(file_href(path), _COG, roles, fields, title)


def _s2_band_fields(name: str) -> tuple[dict, dict]:
    """(eo:bands entry, raster:bands entry) of one S2 band or SCL."""
    if name == S2_SCL_ASSET:
        return {"name": name, "description": "scene classification"}, {
            "data_type": "uint8",
            "nodata": 0,
            "spatial_resolution": 20,
        }
    band = next(b for b in S2_BANDS if b.name == name)
    eo = eo_band(band)
    raster = {
        "data_type": "uint16",
        "nodata": 0,
        "spatial_resolution": band.resolution_m,
        "scale": 0.0001,
        "offset": 0,
    }
    return eo, raster


def _s2_item(
    scene: Scene, seed: int, d: int, when: datetime, kind: str, data: Path, extra: dict | None = None
) -> pystac.Item:
    item_id = f"S2A_DEMO_{scene.index:03d}_{when:%Y%m%d}"
    render = render_s2(scene, seed, d, when, kind)
    props = {
        **(extra or {}),
        "platform": "sentinel-2a",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": render.cloud_cover,
        "proj:code": "EPSG:32632",
        "proj:epsg": 32632,
        "s2:processing_baseline": "05.10",
        "eoforge:scene": scene.index,
    }
    item = new_item(item_id, scene.grids[10].footprint(), when, props, [EO, PROJ, RASTER])
    folder = data / S2_COLLECTION / item_id
    for band in S2_BANDS:
        grid = scene.grids[int(band.resolution_m)]
        write_cog(folder / f"{band.name}.tif", render.bands[band.name], grid, nodata=0)
        eo, raster = _s2_band_fields(band.name)
        fields = {"eo:bands": [eo], "raster:bands": [raster], **_proj(grid)}
        item.add_asset(
            band.name,
            _asset(folder / f"{band.name}.tif", f"{band.name} ({band.common_name})", ["data"], fields),
        )
    write_cog(folder / f"{S2_SCL_ASSET}.tif", render.scl, scene.grids[20], nodata=0, resampling="nearest")
    eo, raster = _s2_band_fields(S2_SCL_ASSET)
    item.add_asset(
        S2_SCL_ASSET,
        _asset(
            folder / f"{S2_SCL_ASSET}.tif",
            "Scene classification map",
            ["data", "cloud"],
            {"raster:bands": [raster], **_proj(scene.grids[20])},
        ),
    )
    return item


def _s1_item(scene: Scene, seed: int, d: int, when: datetime, ascending: bool, data: Path) -> pystac.Item:
    item_id = f"S1A_DEMO_{scene.index:03d}_{when:%Y%m%d}"
    vv, vh = render_s1(scene, seed, d, when)
    props = {
        "platform": "sentinel-1a",
        "constellation": "sentinel-1",
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "GRD",
        "sat:orbit_state": "ascending" if ascending else "descending",
        "sat:relative_orbit": 15 if ascending else 168,
        "proj:code": "EPSG:4326",
        "proj:epsg": 4326,
        "eoforge:scene": scene.index,
        "eoforge:reflectors": [[lon, lat] for lon, lat in scene.reflectors],
    }
    item = new_item(item_id, scene.s1_grid.footprint(), when, props, [SAR, SAT, PROJ, RASTER])
    folder = data / S1_COLLECTION / item_id
    for band, arr in zip(S1_BANDS, (vv, vh), strict=True):
        write_cog(folder / f"{band.name}.tif", arr, scene.s1_grid, nodata=-9999.0)
        raster = {"data_type": "float32", "nodata": -9999.0, "unit": "dB", "spatial_resolution": 10}
        fields = {"sar:polarizations": [band.common_name], "raster:bands": [raster], **_proj(scene.s1_grid)}
        item.add_asset(
            band.name,
            _asset(folder / f"{band.name}.tif", f"{band.common_name} backscatter (dB)", ["data"], fields),
        )
    return item


def _label_item(scene: Scene, when: datetime, sources: list[pystac.Item], data: Path) -> pystac.Item:
    item_id = f"DFC_DEMO_{scene.index:03d}"
    props = {
        "label:type": "raster",
        "label:tasks": ["segmentation", "classification"],
        "label:description": "Synthetic DFC2020 land cover (8 classes, 0 Forest .. 7 Water; 255 ignore)",
        "label:properties": None,
        "label:classes": [{"name": None, "classes": list(range(len(DFC_CLASSES)))}],
        "eoforge:class_names": list(DFC_CLASSES),
        "proj:code": "EPSG:32632",
        "proj:epsg": 32632,
        "eoforge:scene": scene.index,
    }
    grid = scene.grids[10]
    item = new_item(item_id, grid.footprint(), when, props, [LABEL, PROJ, RASTER])
    path = data / LABEL_COLLECTION / item_id / "labels.tif"
    write_cog(path, np.ascontiguousarray(scene.label_map), grid, nodata=DFC_IGNORE, resampling="nearest")
    raster = {"data_type": "uint8", "nodata": DFC_IGNORE, "spatial_resolution": 10}
    item.add_asset(
        "labels",
        _asset(path, "DFC2020 class ids", ["labels", "data"], {"raster:bands": [raster], **_proj(grid)}),
    )
    for source in sources:
        item.add_link(pystac.Link("source", source, media_type=pystac.MediaType.JSON, title=source.id))
    return item


def _collection(cid: str, what: str, items: list[pystac.Item], summaries: dict, ext: list[str]) -> pystac.Collection:
    """A synthetic collection holding ``items``: extent from their bboxes and times, item_assets from the first."""
    return collection_of(
        cid,
        f"Synthetic demo data generated by eoforge (not real {what}); for tests and tutorials.",
        items,
        "CC-BY-4.0",
        title=f"{what} (synthetic)",
        summaries=summaries,
        extensions=ext,
        item_assets=True,
    )


def demo_collections(
    s2: list[pystac.Item], s1: list[pystac.Item], labels: list[pystac.Item]
) -> list[pystac.Collection]:
    """The S2, S1 and (when there are label items) label collections of the synthetic scenes."""
    s2_summaries = {
        "platform": ["sentinel-2a"],
        "constellation": ["sentinel-2"],
        "instruments": ["msi"],
        "gsd": [10, 20, 60],
        "eo:bands": [_s2_band_fields(b.name)[0] for b in S2_BANDS],
    }
    s1_summaries = {
        "platform": ["sentinel-1a"],
        "constellation": ["sentinel-1"],
        "sar:instrument_mode": ["IW"],
        "sar:polarizations": ["VV", "VH"],
        "sat:orbit_state": ["ascending", "descending"],
    }
    label_summaries = {
        "label:type": ["raster"],
        "label:tasks": ["segmentation", "classification"],
        "eoforge:class_names": list(DFC_CLASSES),
    }
    out = [
        _collection(S2_COLLECTION, "Sentinel-2 L2A imagery", s2, s2_summaries, [EO, RASTER]),
        _collection(S1_COLLECTION, "Sentinel-1 GRD imagery", s1, s1_summaries, [SAR, RASTER]),
    ]
    if labels:  # an unlabelled pool has none
        out.append(_collection(LABEL_COLLECTION, "DFC2020 labels", labels, label_summaries, [LABEL, RASTER]))
    return out


def labelled_season(seed: int, k: int) -> int:
    """The season (index into :data:`SEASON_NAMES`) in which labelled scene ``k`` is imaged.

    As in SEN12MS and DFC2020, a region of interest is imaged in one season, and the labelled set
    spans all four: each block of four consecutive scenes (three train ROIs and one test ROI, see
    :func:`roi_split`) takes the four seasons in an order drawn from the seed.
    """
    return int(stream(seed, _TAG_SEASONS, k // 4).permutation(4)[k % 4])


def _dates(seed: int, k: int, n: int) -> list[datetime]:
    rng = stream(seed, _TAG_DATES, k)
    steps = rng.choice([10, 15, 20], size=n)
    first = START + timedelta(days=SEASON_OFFSETS_DAYS[labelled_season(seed, k)] + 2 * k)
    return [first + timedelta(days=int(steps[:i].sum())) for i in range(n)]


def cloud_kind(seed: int, k: int, d: int, n_dates: int) -> str:
    """Cloud scenario ("clear", "light" or "heavy") of date ``d`` of scene ``k``.

    Scene 0's second date (its only date if ``n_dates`` is 1) is "heavy"; every other date is
    "clear" (35 %) or "light" (65 %), drawn from the seed.
    """
    if k == 0 and d == min(1, n_dates - 1):
        return "heavy"
    return "clear" if stream(seed, _TAG_DATES, k, d + 1).random() < 0.35 else "light"


def roi_split(k: int, scenes: int) -> str:
    """The split of labelled scene ``k``'s region of interest (S2 property ``eoforge:roi_split``).

    As in DFC2020, train and test come from different regions: every fourth scene (3, 7, ...)
    is a test ROI, and with 2 or 3 scenes the last one is; the rest are train ROIs (a plan
    carves val out of them by place, ``splits.by_property.val_fraction``).
    """
    return "test" if k % 4 == 3 or (scenes in (2, 3) and k == scenes - 1) else "train"


def write_scenes(
    root: Path,
    seed: int,
    scenes: list[tuple[Scene, list[datetime]]],
    labelled: bool,
    extra: Callable[[int], dict] | None = None,
) -> tuple[list[pystac.Item], list[pystac.Item], list[pystac.Item]]:
    """Render and write each (scene, S2 dates): COGs under ``root/data``; (S2, S1, label) items.

    S1 acquisitions are the S2 dates shifted by :data:`S1_OFFSETS_DAYS`, cycled over all S2
    acquisitions in order. ``extra(k)`` adds properties to scene k's S2 items. Prints one
    progress line per scene.
    """
    data = root / "data"
    s2_items: list[pystac.Item] = []
    s1_items: list[pystac.Item] = []
    label_items: list[pystac.Item] = []
    i = 0
    for n, (scene, dates) in enumerate(scenes):
        k = scene.index
        scene_s2 = []
        for d, when in enumerate(dates):
            kind = cloud_kind(seed, k, d, len(dates))
            scene_s2.append(_s2_item(scene, seed, d, when, kind, data, extra(k) if extra else None))
            s1_when = when + timedelta(days=S1_OFFSETS_DAYS[i % len(S1_OFFSETS_DAYS)])
            s1_items.append(_s1_item(scene, seed, d, s1_when, i % 2 == 0, data))
            i += 1
        if labelled:
            label_items.append(_label_item(scene, dates[0], scene_s2, data))
        s2_items.extend(scene_s2)
        covers = ", ".join(f"{it.properties['eo:cloud_cover']:.0f}" for it in scene_s2)
        say(f"demo: scene {n + 1}/{len(scenes)} written ({len(dates)} S2 + S1 dates, cloud % {covers})")
    return s2_items, s1_items, label_items


def write_demo_catalog(
    out: Path, scenes: int = 4, seed: int = 0, dates_per_scene: int = 3, size_px: int = 256
) -> DemoCatalog:
    """Write the synthetic demo catalog (layout in the module docstring).

    Prints one progress line per scene to stderr. Files of an earlier run in ``out`` with
    the same names are overwritten; other files are left alone.

    Args:
        out: output folder (created).
        scenes: number of scenes (>= 1), laid out 8 per row, 5 km apart, west to east.
        seed: everything (land cover, dates, clouds, noise, reflectors) follows from it.
        dates_per_scene: Sentinel-2 acquisitions per scene (>= 1), 10-20 days apart.
        size_px: scene side in 10 m pixels (>= 100, so the reflectors fit 40 px inside).

    Returns:
        Paths and item ids of what was written.

    Raises:
        ConfigError: an argument is out of range.
    """
    if scenes < 1 or dates_per_scene < 1:
        raise ConfigError(f"demo catalog: scenes={scenes} and dates_per_scene={dates_per_scene} must be >= 1")
    if size_px < 100:
        raise ConfigError(f"demo catalog: size_px={size_px} must be >= 100")
    root = Path(out).expanduser().resolve()
    world = World.from_seed(seed)
    scenes_ = [(make_scene(world, seed, k, size_px), _dates(seed, k, dates_per_scene)) for k in range(scenes)]
    roles = {k: roi_split(k, scenes) for k in range(scenes)}
    s2_items, s1_items, label_items = write_scenes(
        root, seed, scenes_, labelled=True, extra=lambda k: {"eoforge:roi_split": roles[k]}
    )
    all_items = save_catalog(
        root,
        CATALOG_ID,
        "Synthetic co-located Sentinel-1/Sentinel-2 scenes with DFC2020 "
        "labels, generated by eoforge for tests and tutorials.",
        demo_collections(s2_items, s1_items, label_items),
        title="eoforge demo",
    )
    bboxes = np.array([it.bbox for it in all_items])
    west, south = bboxes[:, :2].min(axis=0)
    east, north = bboxes[:, 2:].max(axis=0)
    times = sorted(it.datetime for it in all_items if it.datetime is not None)
    return DemoCatalog(
        root=root,
        catalog_json=root / "catalog.json",
        collections_ndjson=root / "collections.ndjson",
        items_ndjson=root / "items.ndjson",
        s2_item_ids=tuple(it.id for it in s2_items),
        s1_item_ids=tuple(it.id for it in s1_items),
        label_item_ids=tuple(it.id for it in label_items),
        bbox=(float(west), float(south), float(east), float(north)),
        datetime_range=f"{_iso(times[0])}/{_iso(times[-1])}",
    )
