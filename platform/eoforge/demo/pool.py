"""An unlabelled pool beside the demo catalog: the many places self-supervised pretraining sees.

SSL is meant for an unlabelled pool far larger than the labelled set (SSL4EO-S12 pretrains on
250k places and labels none of them). :func:`write_pool_catalog` writes one under
``<out>/catalog.json``: the same world (same land-cover physics and regional conditions as the
labelled catalog of that seed), but

- other places: ``scenes`` squares laid out at random by ``layout_seed`` in a box around the
  labelled scenes (about 180 km x 150 km, so many regions), never overlapping a labelled scene
  (test places never enter pretraining) or each other;
- several seasons: ``dates_per_scene`` Sentinel-2 acquisitions spread over a year (one per
  season with 4), each with its Sentinel-1 acquisition 0-2 days away;
- Sentinel-2 and Sentinel-1 collections only: no labels.

Pool scene ``j`` has index ``POOL_INDEX0 + j`` (item ids ``S2A_DEMO_<index>_<date>``), so its
random streams (clouds, noise, speckle) are its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from eoforge.demo.catalog import START, demo_collections, write_scenes
from eoforge.demo.stac_writer import save_catalog
from eoforge.demo.synth import ORIGIN_X, ORIGIN_Y, SCENE_GAP_M, make_scene, scene_origin, stream
from eoforge.demo.world import World
from eoforge.errors import ConfigError

POOL_CATALOG_ID = "eoforge-demo-pool"
#: Index of pool scene 0 (labelled scenes are 0, 1, ...).
POOL_INDEX0 = 1000
#: Box (EPSG:32632 metres, relative to the labelled scene 0's corner) the pool is drawn in.
POOL_BOX_M = (-60_000.0, 120_000.0, -90_000.0, 60_000.0)  # west, east, south, north
_TAG_LAYOUT, _TAG_POOL_DATES = 11, 12


@dataclass(frozen=True)
class PoolCatalog:
    """What :func:`write_pool_catalog` wrote: the catalog file, S2 item ids and scene origins."""

    root: Path
    catalog_json: Path
    s2_item_ids: tuple[str, ...]
    origins: tuple[tuple[float, float], ...]


def pool_origins(n: int, size_px: int, layout_seed: int, labelled_scenes: int) -> list[tuple[float, float]]:
    """Upper-left corners (EPSG:32632 m, multiples of 60 m) of ``n`` pool scenes.

    Drawn uniformly in :data:`POOL_BOX_M` by ``layout_seed``; a draw whose square, grown by
    ``SCENE_GAP_M / 2`` on every side, meets a labelled scene's or an accepted pool scene's is
    drawn again.

    Raises:
        ConfigError: the box cannot hold ``n`` scenes apart from each other.
    """
    rng = stream(layout_seed, _TAG_LAYOUT, 0)
    side = size_px * 10.0
    pad = SCENE_GAP_M / 2
    taken = [scene_origin(k, size_px) for k in range(labelled_scenes)]
    west, east, south, north = POOL_BOX_M
    out: list[tuple[float, float]] = []
    for _ in range(200 * max(n, 1)):
        if len(out) == n:
            break
        x = math.floor((ORIGIN_X + rng.uniform(west, east)) / 60.0) * 60.0
        y = math.floor((ORIGIN_Y + rng.uniform(south, north)) / 60.0) * 60.0
        clear = all(abs(x - x2) >= side + 2 * pad or abs(y - y2) >= side + 2 * pad for x2, y2 in taken)
        if clear:
            taken.append((x, y))
            out.append((x, y))
    if len(out) < n:
        raise ConfigError(f"demo pool: only {len(out)} of {n} scenes of {size_px} px fit apart in the pool box")
    return out


def pool_dates(seed: int, j: int, n: int) -> list[datetime]:
    """``n`` acquisition times of pool scene ``j`` spread over one year from a random day (several seasons)."""
    rng = stream(seed, _TAG_POOL_DATES, POOL_INDEX0 + j)
    first = float(rng.uniform(0.0, 365.0))
    days = [first + i * 365.0 / n + float(rng.uniform(-10.0, 10.0)) for i in range(n)]
    return [START + timedelta(days=round(max(d, 0.0))) for d in sorted(days)]


def write_pool_catalog(
    out: Path,
    scenes: int,
    seed: int = 0,
    dates_per_scene: int = 4,
    size_px: int = 256,
    layout_seed: int = 1,
    labelled_scenes: int = 0,
) -> PoolCatalog:
    """Write the unlabelled pool (layout in the module docstring) under ``out``.

    Args:
        out: output folder (created), e.g. ``<demo catalog>/pool``.
        scenes: pool scenes (>= 1).
        seed: the world seed: the same as the labelled catalog's, so both see one world.
        dates_per_scene: acquisitions per scene, spread over a year (>= 1).
        size_px: scene side in 10 m pixels (>= 100).
        layout_seed: where the pool scenes lie (another layout than the labelled scenes').
        labelled_scenes: how many labelled scenes the catalog beside it has (the pool avoids them).

    Raises:
        ConfigError: an argument is out of range, or the scenes do not fit.
    """
    if scenes < 1 or dates_per_scene < 1 or size_px < 100:
        raise ConfigError(
            f"demo pool: scenes={scenes}, dates_per_scene={dates_per_scene} must be >= 1 and size_px={size_px} >= 100"
        )
    root = Path(out).expanduser().resolve()
    world = World.from_seed(seed)
    origins = pool_origins(scenes, size_px, layout_seed, labelled_scenes)
    laid_out = [
        (make_scene(world, seed, POOL_INDEX0 + j, size_px, origin), pool_dates(seed, j, dates_per_scene))
        for j, origin in enumerate(origins)
    ]
    s2_items, s1_items, _ = write_scenes(root, seed, laid_out, labelled=False)
    save_catalog(
        root,
        POOL_CATALOG_ID,
        "Unlabelled pool of synthetic co-located Sentinel-1/Sentinel-2 scenes (several seasons) for "
        "self-supervised pretraining; generated by eoforge beside its labelled demo catalog.",
        demo_collections(s2_items, s1_items, []),
        title="eoforge demo pool",
    )
    return PoolCatalog(root, root / "catalog.json", tuple(it.id for it in s2_items), tuple(origins))
