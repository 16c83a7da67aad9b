"""The 10 m grid a chip is read onto, and where it lies in a file georeferenced by GCPs.

:class:`ChipGrid` is a plan row's target grid. :func:`gcp_window` traces it into a file that has
no CRS but ground control points (Sentinel-1 GRD in radar geometry): the chip's source window
and a local polynomial fitted to the GCPs nearest to the chip. The item's ``proj:transform`` is
never used for GRD (providers publish bbox-derived values that are wrong).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine, GCPTransformer
from rasterio.windows import Window

from eoforge.errors import ChipReadError

#: GCPs used for the local polynomial around one chip's source window.
_LOCAL_GCPS = 16


@dataclass(frozen=True)
class ChipGrid:
    """Target grid of a chip: CRS string, affine transform, size in pixels (square)."""

    crs: str
    transform: Affine
    size: int


def gcp_window(
    src: rasterio.DatasetReader, grid: ChipGrid
) -> tuple[Window, list[GroundControlPoint], object, GCPTransformer] | None:
    """Source window (+ margin) under the chip, the GCPs nearest to it, their CRS and a transformer.

    Returns None when the chip does not touch the image.
    """
    gcps, gcp_crs = src.gcps
    if not gcps or gcp_crs is None:
        raise ChipReadError("no CRS and no GCPs: the file cannot be georeferenced (refusing a silent read)")
    if len(gcps) < 3:
        raise ChipReadError(f"only {len(gcps)} GCPs: at least 3 are needed to georeference")
    t = np.linspace(0, grid.size, 9)
    cols = np.concatenate([t, np.full_like(t, grid.size), t[::-1], np.zeros_like(t), [grid.size / 2]])
    rows = np.concatenate([np.zeros_like(t), t, np.full_like(t, grid.size), t[::-1], [grid.size / 2]])
    xs, ys = grid.transform * (cols, rows)
    lon, lat = Transformer.from_crs(grid.crs, gcp_crs, always_xy=True).transform(xs, ys)
    full = GCPTransformer(gcps)
    r, c = full.rowcol(np.asarray(lon), np.asarray(lat), op=lambda v: v)
    r, c = np.asarray(r, float), np.asarray(c, float)
    # nearest GCPs to the chip centre (pixel space) -> a local fit, accurate within a GCP cell
    centre = np.array([r[-1], c[-1]])
    pts = np.array([[g.row, g.col] for g in gcps])
    near = [gcps[i] for i in np.argsort(np.hypot(*(pts - centre).T))[: min(len(gcps), _LOCAL_GCPS)]]
    local = GCPTransformer(near)
    r, c = local.rowcol(np.asarray(lon), np.asarray(lat), op=lambda v: v)
    r, c = np.asarray(r, float), np.asarray(c, float)
    pad = 8 + 0.1 * max(np.ptp(r), np.ptp(c))
    r0, r1 = max(0, math.floor(r.min() - pad)), min(src.height, math.ceil(r.max() + pad))
    c0, c1 = max(0, math.floor(c.min() - pad)), min(src.width, math.ceil(c.max() + pad))
    if r0 >= r1 or c0 >= c1:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0), near, gcp_crs, local
