"""GDAL's own warp of one band onto a chip grid: the reference the tile reader is tested against.

:func:`read_band` reads band 1 of a file on a :class:`~eoforge.data.grid.ChipGrid` with
:class:`rasterio.vrt.WarpedVRT` (or :func:`rasterio.warp.reproject` with GCPs). Test- and
bench-only: the platform reads through :mod:`eoforge.data.tiles`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import rasterio
from eoforge.catalog.assets import gdal_path, sign_href
from eoforge.data.grid import ChipGrid, gcp_window
from eoforge.errors import ChipReadError
from rasterio.control import GroundControlPoint
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject
from rasterio.windows import Window


def _aligned_window(src: rasterio.DatasetReader, grid: ChipGrid) -> Window | None:
    """A window of ``src`` equal to the chip grid, or None if a resampling is needed."""
    if src.crs is None or src.crs.to_string() != rasterio.crs.CRS.from_user_input(grid.crs).to_string():
        return None
    st, gt = src.transform, grid.transform
    if not (math.isclose(st.a, gt.a) and math.isclose(st.e, gt.e) and st.b == 0 and st.d == 0):
        return None
    col, row = ~st * (gt.c, gt.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return Window(round(col), round(row), grid.size, grid.size)


def _read_by_gcps(src: rasterio.DatasetReader, grid: ChipGrid, resampling: Resampling, fill: float) -> np.ndarray:
    """Warp the chip's source window of a GCP-georeferenced file onto the chip grid."""
    found = gcp_window(src, grid)
    out = np.full((grid.size, grid.size), fill, np.float32)
    if found is None:
        return out
    win, near, gcp_crs, _ = found
    data = src.read(1, window=win).astype(np.float32)
    shifted = [GroundControlPoint(row=g.row - win.row_off, col=g.col - win.col_off, x=g.x, y=g.y, z=g.z) for g in near]
    reproject(
        source=data,
        destination=out,
        gcps=shifted,
        src_crs=gcp_crs,
        src_nodata=src.nodata,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=fill,
        resampling=resampling,
    )
    return out


def read_band(
    href: str,
    grid: ChipGrid,
    resampling: Resampling,
    fill: float,
    sign: Callable[[str], str] | None = None,
) -> np.ndarray:
    """Read band 1 of ``href`` on ``grid``: float32 [H, W]; outside / nodata pixels get ``fill``.

    Args:
        href: the unsigned href from the plan.
        grid: the chip grid.
        resampling: resampling when the file is not on the chip grid.
        fill: value of pixels outside the file or nodata.
        sign: signing hook applied to ``href`` just before opening it (None: as is).

    Raises:
        ChipReadError: the file is missing, corrupt, unreadable, or cannot be georeferenced.
    """
    path = gdal_path(sign_href(href, sign))
    try:
        with rasterio.open(path) as src:
            nodata = src.nodata
            if src.crs is None:
                data = _read_by_gcps(src, grid, resampling, fill)
            else:
                window = _aligned_window(src, grid)
                if window is not None:
                    data = src.read(1, window=window, boundless=True, fill_value=nodata if nodata is not None else fill)
                else:
                    with WarpedVRT(
                        src,
                        crs=grid.crs,
                        transform=grid.transform,
                        width=grid.size,
                        height=grid.size,
                        resampling=resampling,
                        src_nodata=nodata,
                        nodata=nodata if nodata is not None else fill,
                    ) as vrt:
                        data = vrt.read(1)
    except ChipReadError as exc:
        raise ChipReadError(f"{href}: {exc}") from None
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        raise ChipReadError(f"{href}: {type(exc).__name__}: {exc}") from None
    out = data.astype(np.float32)
    if nodata is not None:
        out[(data == nodata) | ~np.isfinite(out)] = fill
    return out
