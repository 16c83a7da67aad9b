"""De-duplication rules of the search, datetime partitions, and the search settings of the config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pystac
import pytest
from eoforge.catalog.dedup import dedup_acquisitions, mgrs_tile, s1_acquisition_key, s2_acquisition_key, unique_ids
from eoforge.catalog.http import safe_url, safe_url_in_text
from eoforge.catalog.partitions import datetime_partitions
from eoforge.catalog.search import SearchQuery, StaticCatalogBackend, search_sensor_items
from eoforge.config import DataConfig, parse_config
from eoforge.errors import ConfigError

T0 = datetime(2024, 5, 3, 10, 20, 21, 24000, tzinfo=UTC)


def square(x: float, y: float, side: float = 1.0) -> dict[str, Any]:
    return {
        "type": "Polygon",
        "coordinates": [[[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]],
    }


def make_item(
    item_id: str, when: datetime = T0, geometry: dict[str, Any] | None = None, collection: str = "s2", **props: Any
) -> pystac.Item:
    geometry = geometry or square(7.0, 45.0)
    xs = [p[0] for p in geometry["coordinates"][0]]
    ys = [p[1] for p in geometry["coordinates"][0]]
    item = pystac.Item(item_id, geometry, [min(xs), min(ys), max(xs), max(ys)], when, dict(props))
    item.collection_id = collection
    return item


def s2(item_id: str, baseline: str | None = "05.00", when: datetime = T0, **props: Any) -> pystac.Item:
    base = {"platform": "sentinel-2a", "s2:mgrs_tile": "32TMT"}
    if baseline is not None:
        base["s2:processing_baseline"] = baseline
    return make_item(item_id, when, **{**base, **props})


def s1(item_id: str, when: datetime = T0, **props: Any) -> pystac.Item:
    base = {"platform": "sentinel-1a", "sat:absolute_orbit": 53712, "sar:product_type": "GRD", "s1:slice_number": 3}
    return make_item(item_id, when, collection="s1", **{**base, **props})


def kept_ids(items: list[pystac.Item], key: Any) -> list[str]:
    kept, _ = dedup_acquisitions(items, key)
    return sorted(it.id for it in kept)


def test_reprocessed_s2_keeps_the_newest_processing_baseline() -> None:
    old = s2("S2A_32TMT_20240503_0_L2A", "02.14")
    new = s2("S2A_32TMT_20240503_1_L2A", "05.10")
    for order in ([old, new], [new, old]):
        kept, dropped = dedup_acquisitions(order, s2_acquisition_key)
        assert [it.id for it in kept] == [new.id]
        assert dropped == [(old.id, new.id)]


def test_s2_tile_from_any_of_the_published_properties() -> None:
    assert mgrs_tile({"s2:mgrs_tile": "32TMT"}) == "32TMT"
    assert mgrs_tile({"grid:code": "MGRS-32TMT"}) == "32TMT"
    assert mgrs_tile({"mgrs:utm_zone": 32, "mgrs:latitude_band": "T", "mgrs:grid_square": "MT"}) == "32TMT"
    assert mgrs_tile({"grid:code": "MGRS-1CDE"}) == "01CDE"
    assert mgrs_tile({"grid:code": "WRS2-195028"}) is None
    # the same acquisition described by two metadata generations is still one acquisition
    a = s2("S2A_MSIL2A_20240503T102021_N0510_R065_T32TMT_20240503T170321", "05.10")
    b = s2("S2A_32TMT_20240503_0_L2A", "02.14", **{"s2:mgrs_tile": None, "grid:code": "MGRS-32TMT"})
    assert kept_ids([a, b], s2_acquisition_key) == [a.id]


def test_ties_fall_to_updated_then_created_then_largest_id() -> None:
    a = s2("A", updated="2024-06-01T00:00:00Z", created="2024-05-04T00:00:00Z")
    b = s2("B", updated="2024-07-01T00:00:00Z", created="2024-05-04T00:00:00Z")
    assert kept_ids([a, b], s2_acquisition_key) == ["B"]
    c = s2("C", created="2024-05-04T00:00:00Z")
    d = s2("D", created="2024-05-05T00:00:00Z")
    assert kept_ids([d, c], s2_acquisition_key) == ["D"]
    assert kept_ids([s2("X1"), s2("X2"), s2("X0")], s2_acquisition_key) == ["X2"]
    # a missing baseline loses to any known one
    assert kept_ids([s2("Z", None), s2("Y", "00.01")], s2_acquisition_key) == ["Y"]


def test_different_acquisitions_are_all_kept() -> None:
    ref = s2("ref")
    others = [
        s2("other-tile", **{"s2:mgrs_tile": "32TNT"}),
        s2("other-platform", platform="sentinel-2b"),
        s2("two-seconds-later", when=T0 + timedelta(seconds=2)),
        s2("five-days-later", when=T0 + timedelta(days=5)),
        s2("no-tile", **{"s2:mgrs_tile": None}),
    ]
    for other in others:
        assert kept_ids([ref, other], s2_acquisition_key) == sorted([ref.id, other.id]), other.id
    # patches of one scene with the scene's metadata copied onto each: footprints do not overlap enough
    left = s2("patch-a", geometry=square(7.0, 45.0, 0.1))
    right = s2("patch-b", geometry=square(7.05, 45.0, 0.1))  # half overlap: IoU 1/3
    assert kept_ids([left, right], s2_acquisition_key) == ["patch-a", "patch-b"]
    # but a re-published footprint that moved a little is the same acquisition
    moved = s2("moved", "05.10", geometry=square(7.01, 45.0))
    assert kept_ids([ref, moved], s2_acquisition_key) == ["moved"]


def test_s1_same_slice_is_merged_and_other_slices_are_not() -> None:
    grd = s1("S1A_IW_GRDH_1SDV_20240503T053530_20240503T053555_053712_0686A5_1A2B", updated="2024-05-03T09:00:00Z")
    again = s1("S1A_IW_GRDH_1SDV_20240503T053530_20240503T053555_053712_0686A5_9C8D", updated="2024-05-09T09:00:00Z")
    assert kept_ids([grd, again], s1_acquisition_key) == [again.id]
    next_slice = s1("next-slice", **{"s1:slice_number": 4})
    other_orbit = s1("other-orbit", **{"sat:absolute_orbit": 53713})
    other_product = s1("slc", **{"sar:product_type": "SLC"})
    for other in (next_slice, other_orbit, other_product):
        assert kept_ids([grd, other], s1_acquisition_key) == sorted([grd.id, other.id]), other.id
    # patch catalogs (no absolute orbit): every item at one datetime stays
    patches = [make_item(f"p{i}", geometry=square(7.0, 45.0), platform="sentinel-1") for i in range(3)]
    assert kept_ids(patches, s1_acquisition_key) == ["p0", "p1", "p2"]


def test_unique_ids_keeps_one_copy_whatever_the_order() -> None:
    old = s2("same-id", updated="2024-06-01T00:00:00Z")
    new = s2("same-id", updated="2024-07-01T00:00:00Z")
    other = s2("other-id", when=T0 + timedelta(days=1))
    for order in ([old, new, other], [other, new, old]):
        kept, dropped = unique_ids(order)
        assert dropped == 1
        assert sorted(it.id for it in kept) == ["other-id", "same-id"]
        assert next(it for it in kept if it.id == "same-id").properties["updated"] == "2024-07-01T00:00:00Z"


def test_partitions_cover_the_query_and_keep_its_ends() -> None:
    lo, hi = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC)
    assert datetime_partitions(None, (lo, hi), 4) == [
        "../2024-01-02T00:00:00.000000Z",
        "2024-01-02T00:00:00.000000Z/2024-01-03T00:00:00.000000Z",
        "2024-01-03T00:00:00.000000Z/2024-01-04T00:00:00.000000Z",
        "2024-01-04T00:00:00.000000Z/..",
    ]
    # the query's own ends are kept; the extent only places the cuts
    assert datetime_partitions("2024-01-03T00:00:00Z/..", (lo, hi), 2) == [
        "2024-01-03T00:00:00Z/2024-01-04T00:00:00.000000Z",
        "2024-01-04T00:00:00.000000Z/..",
    ]
    assert datetime_partitions("2024-01-01T00:00:00Z", (lo, hi), 4) == ["2024-01-01T00:00:00Z"]
    assert datetime_partitions(None, (None, None), 4) == [None]
    assert datetime_partitions(None, (lo, hi), 1) == [None]
    assert datetime_partitions("2025-01-01T00:00:00Z/..", (lo, hi), 3) == ["2025-01-01T00:00:00Z/.."]


def write_catalog(root: Path, items: list[pystac.Item]) -> Path:
    catalog = pystac.Catalog("test", "test")
    for item in items:
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@pytest.mark.parametrize("n_parts", [2, 3, 4, 7])
def test_partitioned_search_merges_to_the_sequential_result(tmp_path: Path, n_parts: int) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    # 10 days, items every 6 hours, some exactly on the partition cuts, two at one instant
    items = [s2(f"S2A_{i:03d}", when=start + timedelta(hours=6 * i)) for i in range(41)]
    items.append(s2("S2A_040b", when=start + timedelta(hours=6 * 40), **{"s2:mgrs_tile": "31TGL"}))
    backend = StaticCatalogBackend(str(write_catalog(tmp_path, items)))
    whole = backend.search(SearchQuery("s2"))
    parts = datetime_partitions(None, (start, start + timedelta(days=10)), n_parts)
    assert len(parts) == n_parts
    found = [it for when in parts for it in backend.search(SearchQuery("s2", datetime=when))]
    merged, repeated = unique_ids(found)
    on_cuts = {start + timedelta(days=10) * i / n_parts for i in range(1, n_parts)} & {it.datetime for it in items}
    assert repeated == len(on_cuts)  # an item on a cut is found by both partitions ...
    assert sorted(merged, key=lambda it: (it.datetime, it.id)) == whole  # ... and kept once
    assert [it.id for it in whole][-2:] == ["S2A_040", "S2A_040b"]
    # max_items: the first n of the whole, sorted result
    for n in (1, 5, 42):
        assert backend.search(SearchQuery("s2", max_items=n)) == whole[:n]


def test_report_counts_what_was_dropped(tmp_path: Path) -> None:
    items = [
        s2("S2A_32TMT_20240503_0_L2A", "02.14"),
        s2("S2A_32TMT_20240503_1_L2A", "05.10"),
        s2("S2A_32TMT_20240513_0_L2A", when=T0 + timedelta(days=10)),
        s1("S1A_slice3_a", updated="2024-05-03T09:00:00Z"),
        s1("S1A_slice3_b", updated="2024-05-04T09:00:00Z"),
        s1("S1A_slice4", **{"s1:slice_number": 4}),
    ]
    catalog = write_catalog(tmp_path, items)
    cfg = parse_config(
        {
            "kind": "data",
            "catalog": {"backend": "static", "url": str(catalog), "s2_collection": "s2", "s1_collection": "s1"},
        },
        "test",
        DataConfig,
    )
    report: dict[str, int] = {}
    found_s2, found_s1 = search_sensor_items(cfg.catalog, report=report)
    assert [it.id for it in found_s2] == ["S2A_32TMT_20240503_1_L2A", "S2A_32TMT_20240513_0_L2A"]
    assert [it.id for it in found_s1] == ["S1A_slice3_b", "S1A_slice4"]
    assert report == {
        "s2_duplicates": 1,
        "s1_duplicates": 1,
        "s2_repeated_ids": 0,
        "s1_repeated_ids": 0,
        "search_requests": 0,
        "search_retries": 0,
        "search_pages": 0,
    }


def test_urls_in_messages_carry_no_secrets() -> None:
    assert safe_url("https://user:hunter2@stac.example.com:8443/api/search?token=abc#token=x") == (
        "https://***@stac.example.com:8443/api/search?…#…"
    )
    text = safe_url_in_text("Max retries exceeded with url: https://a:b@h/search?sig=XYZ (Caused by ...)")
    assert "XYZ" not in text and ":b@" not in text and "https://***@h/search" in text


def test_search_settings_are_validated(tmp_path: Path) -> None:
    base = {"backend": "stac_api", "url": "http://127.0.0.1:1"}
    cfg = parse_config({"kind": "data", "catalog": base}, "test", DataConfig)
    assert (cfg.catalog.retries, cfg.catalog.timeout_s, cfg.catalog.backoff_s, cfg.catalog.search_workers) == (
        5,
        30.0,
        0.5,
        4,
    )
    for field, bad in (("retries", -1), ("timeout_s", 0), ("backoff_s", -0.1), ("search_workers", 0)):
        with pytest.raises(ConfigError, match=field):
            parse_config({"kind": "data", "catalog": {**base, field: bad}}, "test", DataConfig)
