"""Open files of a reading process: a bounded LRU of rasterio datasets, each with its source grid.

The tile reader (:mod:`eoforge.data.tiles`) opens every asset of a tile group once through a
:class:`DatasetCache`; a pooled reading process keeps one (:func:`eoforge.data.reader_task.process_cache`),
so its files (and GDAL's decoded blocks) stay open across tile groups, tasks and epochs. Hrefs are
signed just before their file is opened (a cached dataset keeps its signed URL for at most
``max_age_s``, then it is reopened and signed again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rasterio

from eoforge.catalog.assets import gdal_path, sign_href
from eoforge.data.grid_keys import SourceGrid
from eoforge.errors import ChipReadError


@dataclass(frozen=True)
class OpenSource:
    """An open dataset with what the resampler needs to know about it."""

    ds: Any
    grid: SourceGrid
    nodata: float | None
    block: tuple[int, int]


class DatasetCache:
    """Bounded LRU of open rasterio datasets, keyed by unsigned href (one per reading process).

    Args:
        max_open: datasets kept open; the least recently used one is closed beyond that.
        max_age_s: a dataset opened longer ago than this is reopened (and its href signed again).
    """

    def __init__(self, max_open: int = 64, max_age_s: float = 600.0) -> None:
        self.max_open = max_open
        self.max_age_s = max_age_s
        self._open: OrderedDict[str, tuple[OpenSource, float]] = OrderedDict()
        #: Files opened so far (reopens included): the resume tests count them.
        self.opens = 0

    def get(self, href: str, sign: Callable[[str], str] | None) -> OpenSource:
        """The open dataset of ``href``, opening (and signing) it if needed.

        Raises:
            ChipReadError: the file is missing, corrupt or unreadable.
        """
        hit = self._open.get(href)
        if hit is not None and time.monotonic() - hit[1] < self.max_age_s:
            self._open.move_to_end(href)
            return hit[0]
        if hit is not None:
            self._evict(href)
        path = gdal_path(sign_href(href, sign))
        try:
            ds = rasterio.open(path)
        except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
            raise ChipReadError(f"{href}: {type(exc).__name__}: {exc}") from None
        self.opens += 1
        gcps, gcp_crs = ds.gcps if ds.crs is None else ([], None)
        if ds.crs is not None:
            grid = SourceGrid(ds.crs.to_string(), tuple(ds.transform)[:6], ds.width, ds.height)
        else:
            pts = tuple((g.row, g.col, g.x, g.y) for g in gcps) if gcps else None
            grid = SourceGrid(gcp_crs.to_string() if gcp_crs else None, (), ds.width, ds.height, pts)
        src = OpenSource(ds, grid, ds.nodata, tuple(ds.block_shapes[0]))
        self._open[href] = (src, time.monotonic())
        while len(self._open) > self.max_open:
            self._evict(next(iter(self._open)))
        return src

    def _evict(self, href: str) -> None:
        src, _ = self._open.pop(href)
        src.ds.close()

    def close(self) -> None:
        """Close every open dataset."""
        for href in list(self._open):
            self._evict(href)

    def __len__(self) -> int:
        return len(self._open)
