"""Search at scale against a real STAC API behind a real fault-injecting HTTP proxy.

The demo catalog is loaded into pgstac (stac-fastapi-pgstac); ``tests/support/fault_proxy.py`` runs
as its own process in front of it and fails a seeded 20% of the requests (HTTP 500 / 502 / 503,
responses held past the client's time-out, bodies cut in half). The chip plan built through it
must be identical to the one built directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eoforge.catalog.search import SearchQuery, StacApiBackend, StaticCatalogBackend, search_sensor_items
from eoforge.config import DataConfig, parse_config
from eoforge.errors import ServiceError
from eoforge.plan.io import build_plan

from tests.support.fault_proxy import FAULTS, FaultProxy, start_fault_proxy

#: Small client time-out so that held responses ("timeout" faults) cost little; the proxy holds longer.
TIMEOUT_S = 1.0
HOLD_S = 3.0


def data_cfg(url: str, **catalog: Any) -> DataConfig:
    return parse_config(
        {
            "kind": "data",
            "catalog": {
                "backend": "stac_api",
                "url": url,
                "label_collection": "dfc-labels",
                "max_cloud_cover": 80,
                **catalog,
            },
            "pairing": {"max_days": 3},
            "chips": {"size_px": 64},
        },
        "test",
        DataConfig,
    )


@pytest.fixture(scope="module")
def stac_api(demo_catalog):
    from tests.support.stac_api import start_stac_api

    api = start_stac_api(demo_catalog.collections_ndjson, demo_catalog.items_ndjson)
    yield api
    api.stop()


@pytest.fixture
def fault_proxy(stac_api) -> Iterator[Callable[..., FaultProxy]]:
    """Start fault proxies in front of the STAC API; all are stopped (by PID) at teardown."""
    started: list[FaultProxy] = []

    def start(**kwargs: Any) -> FaultProxy:
        started.append(start_fault_proxy(stac_api.url, **kwargs))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def test_plan_through_a_proxy_failing_20_percent_equals_the_clean_plan(
    demo_catalog, stac_api, fault_proxy, tmp_path: Path
) -> None:
    clean_hash, clean_n = build_plan(data_cfg(stac_api.url), tmp_path / "clean.parquet")
    proxy = fault_proxy(rate=0.2, seed=7, hold_s=HOLD_S)
    # small pages and 4 partitions: many requests, so every kind of fault is met
    faulty = {"page_size": 1, "search_workers": 4, "timeout_s": TIMEOUT_S, "backoff_s": 0.05, "retries": 8}
    faulty_hash, faulty_n = build_plan(data_cfg(proxy.url, **faulty), tmp_path / "faulty.parquet")
    assert (faulty_hash, faulty_n) == (clean_hash, clean_n)
    assert clean_n > 0

    # the search results themselves, whatever the partitioning and page size, equal the static catalog's
    static = StaticCatalogBackend(str(demo_catalog.catalog_json))
    queries = [
        SearchQuery("sentinel-2-l2a", max_cloud_cover=80),
        SearchQuery("sentinel-1-grd"),
        SearchQuery("sentinel-1-grd", max_items=4),  # the first 4 in (datetime, id) order
        SearchQuery("sentinel-2-l2a", datetime="2024-05-03T10:20:00Z/2024-05-28T10:20:00Z", max_items=2),
    ]
    injected_by_plan = proxy.stats()["injected_total"]
    for workers, page_size in ((1, 100), (3, 2), (4, 1)):
        backend = StacApiBackend(proxy.url, page_size, workers=workers, timeout_s=TIMEOUT_S, backoff_s=0.05, retries=8)
        for query in queries:
            assert [i.id for i in backend.search(query)] == [i.id for i in static.search(query)], (workers, query)

    report: dict[str, int] = {}
    s2, s1 = search_sensor_items(data_cfg(proxy.url, **faulty).catalog, report=report)
    clean_s2, clean_s1 = search_sensor_items(data_cfg(stac_api.url).catalog)
    assert ([i.id for i in s2], [i.id for i in s1]) == ([i.id for i in clean_s2], [i.id for i in clean_s1])
    assert report["s2_duplicates"] == report["s1_duplicates"] == 0  # the demo catalog publishes each once
    assert report["search_requests"] > report["search_pages"] > 0

    stats = proxy.stats()
    assert stats["injected_total"] > injected_by_plan > 0
    assert set(stats["injected"]) == set(FAULTS)
    assert all(n > 0 for n in stats["injected"].values()), stats  # 500, 502, 503, time-outs, cut bodies
    assert 0.1 < stats["injected_total"] / stats["requests"] < 0.35, stats
    assert report["search_retries"] > 0


@pytest.mark.parametrize(
    ("fault", "last"), [("503", "HTTP 503"), ("timeout", "ReadTimeout"), ("truncated", "ChunkedEncodingError")]
)
def test_a_search_failing_every_time_names_the_url_the_collection_and_the_attempts(
    stac_api, fault_proxy, fault: str, last: str, tmp_path: Path
) -> None:
    # only /search fails: the root and the collections answer, the search itself never does
    proxy = fault_proxy(rate=1.0, faults=(fault,), hold_s=HOLD_S, path_prefix="/search")
    host = proxy.url.removeprefix("http://")
    cfg = data_cfg(proxy.url, retries=2, timeout_s=0.5, backoff_s=0.01, search_workers=2)
    with pytest.raises(ServiceError) as err:
        build_plan(cfg, tmp_path / "never.parquet")
    msg = str(err.value)
    assert f"STAC API {proxy.url}: search in 'sentinel-2-l2a'" in msg, msg
    assert f"POST {proxy.url}/search failed 3 times; last: {last}" in msg, msg
    assert not (tmp_path / "never.parquet").exists()
    # a config refuses a URL with credentials; a backend given one still never repeats them
    api = StacApiBackend(f"http://reader:s3cret@{host}", retries=2, timeout_s=0.5, backoff_s=0.01, workers=2)
    with pytest.raises(ServiceError) as err:
        api.search(SearchQuery("sentinel-2-l2a"))
    assert "failed 3 times" in str(err.value) and "s3cret" not in str(err.value), str(err.value)


def test_an_api_failing_every_request_is_a_service_error_naming_the_url(fault_proxy) -> None:
    proxy = fault_proxy(rate=1.0, faults=("500", "502", "503"))
    with pytest.raises(ServiceError, match=rf"STAC API {proxy.url}: unreachable: GET {proxy.url}/? failed 2 times"):
        StacApiBackend(proxy.url, retries=1, timeout_s=0.5, backoff_s=0.01)
    assert proxy.stats()["injected_total"] == 2
