"""Grid keys of the resampler: a source file's georeferencing, a chip grid, and mosaics of chips.

:class:`SourceGrid` and :class:`ChipGridKey` are hashable: with a kind they key the sample-map
cache (:func:`eoforge.data.sample_maps.sample_map`). An unrotated grid lies on a pixel lattice
(:func:`lattice`); chips on one lattice are gathered into mosaic grids (:func:`mosaics`) that are
sampled once and cut into chips. Pixel centres computed from integer lattice indices make a chip
sampled alone and a chip cut from its mosaic give the same pixels exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

__all__ = [
    "MOSAIC_CELL",
    "MOSAIC_MIN_FILL",
    "PHASE_DECIMALS",
    "ChipGridKey",
    "SourceGrid",
    "lattice",
    "mosaics",
]


@dataclass(frozen=True)
class SourceGrid:
    """Georeferencing of a source file: CRS + affine, or GCPs (then ``crs`` is the GCPs' CRS).

    ``gcps`` is a tuple of (row, col, x, y) or None; ``width``/``height`` in pixels.
    """

    crs: str | None
    transform: tuple[float, ...]
    width: int
    height: int
    gcps: tuple[tuple[float, float, float, float], ...] | None = None


@dataclass(frozen=True)
class ChipGridKey:
    """A pixel grid as a hashable key: CRS string, 6 affine numbers, ``size`` rows (and ``width`` columns).

    A chip grid is square (``width`` 0 means ``size``); a mosaic of chips (:func:`mosaics`) is not.
    """

    crs: str
    transform: tuple[float, ...]
    size: int
    width: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) in pixels."""
        return self.size, self.width or self.size


#: Decimals kept of a lattice phase (metres or degrees): chips whose origins agree to this share a lattice.
PHASE_DECIMALS = 6
#: Lattice cells (pixels) per mosaic side: chips whose origins fall in one cell are read as one mosaic.
MOSAIC_CELL = 512
#: A mosaic is used only when its chips cover at least this share of it (else chip by chip).
MOSAIC_MIN_FILL = 0.25


def _phase(v: float, step: float) -> float:
    p = round(v % step, PHASE_DECIMALS)
    return 0.0 if math.isclose(p, step, abs_tol=10**-PHASE_DECIMALS) or p == 0 else p


def lattice(grid: ChipGridKey) -> tuple[tuple[str, float, float, float, float], int, int] | None:
    """The pixel lattice of an unrotated grid and the grid's origin on it, or None (rotated).

    Returns ``((crs, a, e, phase_x, phase_y), col0, row0)``: pixel ``(r, c)`` of the grid has its
    centre at ``x = phase_x + a * (col0 + c + 0.5)``, ``y = phase_y + e * (row0 + r + 0.5)``.
    Computing centres from integer lattice indices makes a chip's pixel centres bit-identical
    whether it is sampled alone or as part of a mosaic, so both give the same pixels exactly.
    """
    a, b, c, d, e, f = grid.transform[:6]
    if b != 0 or d != 0 or a == 0 or e == 0:
        return None
    px, py = _phase(c, a), _phase(f, e)
    return (grid.crs, a, e, px, py), round((c - px) / a), round((f - py) / e)


def _mosaic(
    key: tuple[str, float, float, float, float], size: int, members: list[tuple[int, int, int]]
) -> tuple[ChipGridKey, list[tuple[int, int, int]]] | None:
    """The bounding grid of ``members`` (grid index, row0, col0 on the lattice ``key``).

    None when it would be larger than a cell plus a chip, or its chips cover less than
    :data:`MOSAIC_MIN_FILL` of it.
    """
    r_lo, c_lo = min(m[1] for m in members), min(m[2] for m in members)
    h, w = max(m[1] for m in members) - r_lo + size, max(m[2] for m in members) - c_lo + size
    if len(members) > 1 and (max(h, w) > MOSAIC_CELL + size or len(members) * size * size < MOSAIC_MIN_FILL * h * w):
        return None
    crs, a, e, px, py = key
    grid = ChipGridKey(crs, (a, 0.0, px + a * c_lo, 0.0, e, py + e * r_lo), h, w)
    return grid, [(k, r - r_lo, c - c_lo) for k, r, c in members]


def mosaics(grids: list[ChipGridKey] | tuple[ChipGridKey, ...]) -> list[tuple[ChipGridKey, list[tuple[int, int, int]]]]:
    """Chip grids gathered into mosaic grids that are sampled once and cut into chips.

    Chips on one pixel lattice make one mosaic (their bounding grid) when it is at most
    :data:`MOSAIC_CELL` + a chip on a side and they cover at least :data:`MOSAIC_MIN_FILL` of it (a
    tile group of chips); chips spread wider are split by :data:`MOSAIC_CELL` cells of the lattice,
    under the same rule; any other chip is its own mosaic.

    Returns:
        ``[(mosaic grid, [(index into grids, row offset, col offset)])]`` (cached: every band of a
        tile group asks for the same grids).
    """
    return _mosaics(tuple(grids))


@functools.lru_cache(maxsize=32)
def _mosaics(grids: tuple[ChipGridKey, ...]) -> list[tuple[ChipGridKey, list[tuple[int, int, int]]]]:
    lattices: dict[tuple, list[tuple[int, int, int]]] = {}
    out: list[tuple[ChipGridKey, list[tuple[int, int, int]]]] = []
    for k, g in enumerate(grids):
        lat = lattice(g)
        if lat is None or g.width not in (0, g.size):
            out.append((g, [(k, 0, 0)]))
            continue
        key, col0, row0 = lat
        lattices.setdefault((key, g.size), []).append((k, row0, col0))
    for (key, size), members in lattices.items():
        if _mosaic(key, size, members) is None:  # spread out: one mosaic per cell
            cells: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
            for m in members:
                cells.setdefault((m[1] // MOSAIC_CELL, m[2] // MOSAIC_CELL), []).append(m)
            parts = list(cells.values())
        else:
            parts = [members]
        for part in parts:
            mosaic = _mosaic(key, size, part)
            if mosaic is None:
                out.extend((grids[k], [(k, 0, 0)]) for k, _, _ in part)
            else:
                out.append(mosaic)
    return out
