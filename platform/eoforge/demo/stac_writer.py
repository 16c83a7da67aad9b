"""The one way eoforge writes STAC: items, assets, collections and catalogs on disk.

Every catalog writer in :mod:`eoforge.demo` (the synthetic demo catalog and its pool,
SEN12MS / DFC2020, BigEarthNet-MM) builds its JSON with these functions:

- items: :func:`new_item` (bbox from the geometry), with :func:`bounds_footprint` for a file's
  bounds and :func:`file_item` for an item on the grid of a GeoTIFF header;
- assets: :func:`new_asset` with :func:`file_href` and the ``proj:`` fields of :func:`proj_fields`,
  ``eo:bands`` entries from :func:`eo_band`;
- collections: :func:`new_collection`, or :func:`collection_of` to take the extent (and
  optionally ``item_assets``) from items; :class:`ExtentAccumulator` is the extent rule;
- catalogs: :func:`save_catalog` (pystac, in memory, every link absolute, plus the ``pypgstac``
  ndjson files) or :class:`StreamedCatalog` (item by item, memory flat however many items).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
from pyproj import Transformer
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from eoforge.bands import Band
from eoforge.demo.geotiff import RasterInfo

_EXT = "https://stac-extensions.github.io/{}/schema.json"
EO, PROJ, RASTER = _EXT.format("eo/v1.1.0"), _EXT.format("projection/v2.0.0"), _EXT.format("raster/v1.1.0")
SAR, SAT, LABEL = _EXT.format("sar/v1.0.0"), _EXT.format("sat/v1.0.0"), _EXT.format("label/v1.0.1")
#: Media type of a GDAL VRT asset.
VRT_MEDIA_TYPE = "application/x-gdal-vrt"


# ----------------------------------------------------------------------------------------- items


def file_href(path: Path) -> str:
    """``"file://"`` + the plain absolute path of a local file (the href of an asset on disk).

    Not :meth:`Path.as_uri`: GDAL/rasterio do not undo %-escapes (a space in a folder name would
    become ``%20`` and the file would not be found).
    """
    return f"file://{path.absolute()}"


def proj_fields(shape: Sequence[int], transform: Sequence[float], code: str | None = None) -> dict[str, Any]:
    """STAC projection fields of a grid: ``proj:code`` (when given), ``proj:shape``, ``proj:transform``.

    Args:
        shape: (rows, columns).
        transform: the 6 affine numbers a, b, c, d, e, f.
        code: the CRS, e.g. ``"EPSG:32632"``; left out when None.
    """
    out: dict[str, Any] = {} if code is None else {"proj:code": code}
    out["proj:shape"] = [shape[0], shape[1]]
    out["proj:transform"] = list(transform)
    return out


def file_proj(info: RasterInfo) -> dict[str, Any]:
    """STAC projection fields of a GeoTIFF's grid (``proj:code``, ``proj:shape``, ``proj:transform``)."""
    return proj_fields((info.height, info.width), info.transform, info.crs)


def eo_band(band: Band) -> dict[str, Any]:
    """The ``eo:bands`` entry of one optical band: name, common name, centre wavelength (µm)."""
    return {"name": band.name, "common_name": band.common_name, "center_wavelength": band.center_wavelength_um}


def bounds_footprint(crs: str, bounds: Sequence[float], margin_m: float = 0.0) -> dict[str, Any]:
    """GeoJSON Polygon (lon/lat) of the box ``bounds`` (left, bottom, right, top in ``crs``), grown by ``margin_m``."""
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y0, x1, y1 = bounds
    return mapping(shp_transform(to_ll.transform, box(x0 - margin_m, y0 - margin_m, x1 + margin_m, y1 + margin_m)))


def new_item(
    item_id: str, geometry: dict[str, Any], when: datetime, properties: dict[str, Any], extensions: list[str]
) -> pystac.Item:
    """An item with ``geometry`` (a lon/lat Polygon) and the bbox of its outer ring."""
    ring = geometry["coordinates"][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=[min(lons), min(lats), max(lons), max(lats)],
        datetime=when,
        properties=properties,
        stac_extensions=extensions,
    )


def file_item(
    item_id: str,
    info: RasterInfo,
    when: datetime,
    properties: dict[str, Any],
    extensions: list[str],
    margin_m: float = 0.0,
) -> pystac.Item:
    """An item on the grid of a GeoTIFF: footprint of its bounds (grown by ``margin_m``), ``proj:code`` first."""
    geometry = bounds_footprint(info.crs, info.bounds, margin_m)
    return new_item(item_id, geometry, when, {"proj:code": info.crs, **properties}, extensions)


def new_asset(
    href: str, media_type: str, roles: list[str], fields: dict[str, Any], title: str | None = None
) -> pystac.Asset:
    """An asset: ``fields`` are its extension fields (``eo:bands``, ``raster:bands``, ``proj:*`` ...)."""
    return pystac.Asset(href=href, title=title, media_type=media_type, roles=roles, extra_fields=fields)


# ----------------------------------------------------------------------------------------- collections


@dataclass
class ExtentAccumulator:
    """Extent of the items seen so far: bbox union and time range.

    An item's time range is its ``start_datetime``/``end_datetime`` properties where it has them,
    else its ``datetime``.
    """

    bbox: list[float] = field(default_factory=lambda: [180.0, 90.0, -180.0, -90.0])
    start: datetime | None = None
    end: datetime | None = None

    def add(self, item: pystac.Item) -> None:
        """Grow the extent by one item."""
        b = item.bbox or self.bbox
        self.bbox = [min(self.bbox[0], b[0]), min(self.bbox[1], b[1]), max(self.bbox[2], b[2]), max(self.bbox[3], b[3])]
        for key in ("start_datetime", "end_datetime"):
            text = item.properties.get(key)
            when = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else item.datetime
            if when is None:
                continue
            if key == "start_datetime":
                self.start = when if self.start is None else min(self.start, when)
            else:
                self.end = when if self.end is None else max(self.end, when)

    def extent(self) -> pystac.Extent:
        """The STAC extent."""
        return pystac.Extent(pystac.SpatialExtent([self.bbox]), pystac.TemporalExtent([[self.start, self.end]]))


def extent_of(items: Iterable[pystac.Item]) -> pystac.Extent:
    """Extent of ``items`` (see :class:`ExtentAccumulator`)."""
    acc = ExtentAccumulator()
    for item in items:
        acc.add(item)
    return acc.extent()


def new_collection(
    cid: str,
    description: str,
    extent: pystac.Extent,
    license: str,
    title: str | None = None,
    summaries: dict[str, Any] | None = None,
    extensions: list[str] | None = None,
) -> pystac.Collection:
    """An empty collection."""
    return pystac.Collection(
        id=cid,
        title=title,
        description=description,
        license=license,
        extent=extent,
        summaries=pystac.Summaries(summaries) if summaries else None,
        stac_extensions=extensions,
    )


def item_assets_of(item: pystac.Item) -> dict[str, pystac.ItemAssetDefinition]:
    """``item_assets`` of a collection whose items look like ``item``: its assets less their ``proj:`` fields."""
    return {
        key: pystac.ItemAssetDefinition.create(
            asset.title,
            None,
            asset.media_type,
            asset.roles,
            {k: v for k, v in asset.extra_fields.items() if not k.startswith("proj:")},
        )
        for key, asset in item.assets.items()
    }


def collection_of(
    cid: str,
    description: str,
    items: list[pystac.Item],
    license: str,
    title: str | None = None,
    summaries: dict[str, Any] | None = None,
    extensions: list[str] | None = None,
    item_assets: bool = False,
) -> pystac.Collection:
    """A collection holding ``items``, its extent theirs; ``item_assets`` from the first item when asked."""
    collection = new_collection(cid, description, extent_of(items), license, title, summaries, extensions)
    if item_assets:
        collection.item_assets = item_assets_of(items[0])
    collection.add_items(items)
    return collection


# ----------------------------------------------------------------------------------------- catalogs


def dump_ndjson(path: Path, objects: Iterable[pystac.STACObject]) -> None:
    """One saved JSON document per line, read back from disk (so it equals the files); no NaN."""
    with path.open("w", encoding="utf-8") as f:
        for obj in objects:
            doc = json.loads(Path(obj.get_self_href() or "").read_text(encoding="utf-8"))
            f.write(json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n")


def save_catalog(
    root: Path,
    catalog_id: str,
    description: str,
    collections: list[pystac.Collection],
    title: str | None = None,
    ndjson: bool = True,
) -> list[pystac.Item]:
    """Save a self-contained catalog of ``collections`` under ``root``; returns its items.

    ``root/catalog.json``, ``root/<collection>/collection.json`` and the items under them, every
    link absolute (ABSOLUTE_PUBLISHED). With ``ndjson``, also ``root/collections.ndjson`` and
    ``root/items.ndjson`` (the same JSON one document per line, for ``pypgstac load``).
    """
    root.mkdir(parents=True, exist_ok=True)
    catalog = pystac.Catalog(catalog_id, description, title=title)
    for collection in collections:
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
    all_items = [it for c in collections for it in c.get_items()]
    if ndjson:
        dump_ndjson(root / "collections.ndjson", collections)
        dump_ndjson(root / "items.ndjson", all_items)
    return all_items


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created) unless the file already holds exactly it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def item_json_path(root: Path, collection: str, item_id: str) -> Path:
    """Where a catalog under ``root`` keeps an item's JSON: ``root/<collection>/<item>/<item>.json``."""
    return root / collection / item_id / f"{item_id}.json"


def _json_link(
    rel: str, target: Path | str, media_type: str = pystac.MediaType.JSON, title: str | None = None
) -> pystac.Link:
    return pystac.Link(rel, str(target), media_type=media_type, title=title)


@dataclass(frozen=True)
class CollectionText:
    """What a streamed collection says of itself."""

    cid: str
    title: str
    description: str
    extensions: list[str]


class StreamedCatalog:
    """A catalog under ``root`` written item by item (absolute links, JSON indented by 1).

    Each :meth:`write_item` writes one item's JSON at once and keeps only its href and extent;
    :meth:`finish` writes the collections and ``catalog.json``. Same files, same bytes, for the
    same items: a file whose text is unchanged is not rewritten.
    """

    def __init__(self, root: Path, collection_ids: Iterable[str]) -> None:
        """Start a catalog with these collections (none written yet)."""
        self.root = root
        self.catalog_path = root / "catalog.json"
        self._hrefs: dict[str, list[str]] = {cid: [] for cid in collection_ids}
        self._extents = {cid: ExtentAccumulator() for cid in self._hrefs}

    def item_count(self, collection: str) -> int:
        """Items written into ``collection`` so far."""
        return len(self._hrefs[collection])

    def write_item(self, collection: str, item: pystac.Item) -> Path:
        """Write ``item`` into ``collection`` (its links: root, parent, collection, self, then its sources)."""
        item_path = item_json_path(self.root, collection, item.id)
        coll_path = self.root / collection / "collection.json"
        item.links = [
            _json_link("root", self.catalog_path),
            _json_link("parent", coll_path),
            _json_link("collection", coll_path),
            _json_link("self", item_path, pystac.MediaType.GEOJSON),
            *(link for link in item.links if link.rel == "source"),
        ]
        item.collection_id = collection
        write_text(item_path, json.dumps(item.to_dict(include_self_link=True, transform_hrefs=False), indent=1))
        self._hrefs[collection].append(str(item_path))
        self._extents[collection].add(item)
        return item_path

    def finish(self, catalog_id: str, description: str, collections: list[CollectionText], license: str) -> Path:
        """Write every collection (extent of its items) and ``catalog.json``; returns the catalog path."""
        catalog = pystac.Catalog(catalog_id, description, catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
        catalog.set_self_href(str(self.catalog_path))
        for text in collections:
            coll_path = self.root / text.cid / "collection.json"
            extent = self._extents[text.cid].extent()
            coll = new_collection(
                text.cid, text.description, extent, license, title=text.title, extensions=text.extensions
            )
            coll.links = [
                _json_link("root", self.catalog_path),
                _json_link("parent", self.catalog_path),
                _json_link("self", coll_path),
            ] + [_json_link("item", h, pystac.MediaType.GEOJSON) for h in self._hrefs[text.cid]]
            write_text(coll_path, json.dumps(coll.to_dict(include_self_link=True, transform_hrefs=False), indent=1))
            catalog.add_link(_json_link("child", coll_path, title=text.title))
        catalog.links = [
            _json_link("root", self.catalog_path),
            _json_link("self", self.catalog_path),
        ] + [link for link in catalog.links if link.rel == "child"]
        write_text(
            self.catalog_path, json.dumps(catalog.to_dict(include_self_link=True, transform_hrefs=False), indent=1)
        )
        return self.catalog_path
