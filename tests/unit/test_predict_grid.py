"""Output geometry and assembly of the predict job (no Ray): blocks, tiles, blending, nodata, config checks."""

from __future__ import annotations

import numpy as np
import pytest
from eoforge.config import parse_config
from eoforge.config.predict import PredictConfig
from eoforge.errors import ConfigError
from eoforge.plan.sampling import axis_starts
from eoforge.predict.assemble import CLASS_NODATA, TileAccumulator
from eoforge.predict.grid import ItemGrid, blend_weights, item_grid


def windows_of(extent: int, size: int, stride: int, first: int = 0) -> np.ndarray:
    """The planner's windows over a square item of ``extent`` px (``first``: an AOI that cuts off the top-left)."""
    starts = axis_starts(extent, size, stride, cover_edges=True)
    starts = starts[starts >= first]
    return np.array([(r, c) for r in starts for c in starts], dtype=np.int64)


def grid_of(windows: np.ndarray, size: int, stride: int) -> ItemGrid:
    r, c = windows[0]
    return item_grid(
        "item", "EPSG:32632", [10.0, 0, 500000 + c * 10.0, 0, -10.0, 5000000 - r * 10.0], windows, size, stride
    )


def test_the_last_windows_are_flush_with_the_items_bottom_and_right_edges() -> None:
    assert axis_starts(128, 32, 24).tolist() == [0, 24, 48, 72, 96]  # the regular grid fits exactly
    assert axis_starts(130, 32, 24).tolist() == [0, 24, 48, 72, 96]  # today's planner stops 2 px short
    assert axis_starts(130, 32, 24, cover_edges=True).tolist() == [0, 24, 48, 72, 96, 98]
    assert axis_starts(128, 32, 24, cover_edges=True).tolist() == [0, 24, 48, 72, 96]
    assert axis_starts(31, 32, 24, cover_edges=True).tolist() == []  # no whole window fits


@pytest.mark.parametrize(
    ("extent", "size", "stride", "first"),
    [(128, 32, 24, 0), (200, 64, 48, 48), (96, 32, 32, 0), (130, 32, 24, 0), (150, 32, 26, 0), (111, 32, 32, 0)],
)
def test_window_blocks_cover_the_extent_once(extent: int, size: int, stride: int, first: int) -> None:
    windows = windows_of(extent, size, stride, first)
    grid = grid_of(windows, size, stride)
    if first == 0:
        assert (grid.rows, grid.cols) == (extent, extent)  # the windows reach the item's bottom and right edges
    count = np.zeros((grid.rows, grid.cols), int)
    for r, c in windows.tolist():
        r0, c0, r1, c1 = grid.block(r, c)
        count[r0:r1, c0:c1] += 1
    assert (count[first:, first:] == 1).all()
    assert (count[:first] == 0).all() and (count[:, :first] == 0).all()


@pytest.mark.parametrize("blend", ["hann", "cosine", "none"])
@pytest.mark.parametrize("per_pixel", [True, False])
@pytest.mark.parametrize("extent", [128, 141])
def test_position_dependent_outputs_show_no_step_at_window_or_tile_borders(
    blend: str, per_pixel: bool, extent: int
) -> None:
    """Windows that agree on every pixel (a function of the position) give exactly that function, tile by tile.

    141 px: the regular grid stops 13 px short of the bottom and right edges; the windows flush
    with them overlap their neighbours by 19 px instead of 8, and the map still has no step.
    """
    size, stride, tile_px = 32, 24, 40
    windows = windows_of(extent, size, stride)
    grid = grid_of(windows, size, stride)
    assert (grid.rows, grid.cols) == (extent, extent)
    yy, xx = np.mgrid[0 : grid.rows, 0 : grid.cols].astype(np.float32)
    truth = np.stack([np.sin(xx / 17) + 1, np.cos(yy / 11) + 1]) / 4  # [2, rows, cols]

    mosaic = np.full((2, grid.rows, grid.cols), np.nan, np.float32)
    for tile in grid.tiles(tile_px):
        members = [
            (r, c, grid.home(r, c, tile_px) == tile)
            for r, c in windows.tolist()
            if tile in set(grid.touched(r, c, tile_px, per_pixel)) | {grid.home(r, c, tile_px)}
        ]
        weights = blend_weights(size, blend) if per_pixel else None
        acc = TileAccumulator(grid, tile, tile_px, len(members), weights, embeddings=False, classes=2)
        for r, c, home in members:
            out = truth[:, r : r + size, c : c + size] if per_pixel else truth[:, r + size // 2, c + size // 2]
            acc.add(f"item:{r}:{c}", r, c, home, True, out, np.ones((size, size), bool), None)
        assert acc.done
        r0, c0, h, w = grid.tile_window(*tile, tile_px)
        mean = acc.sum / np.maximum(acc.wsum, 1e-12)
        assert (acc.wsum > 0).all(), f"tile {tile} has pixels no window filled"
        mosaic[:, r0 : r0 + h, c0 : c0 + w] = mean
    if per_pixel:
        np.testing.assert_allclose(mosaic, truth, atol=1e-5)
    else:  # each pixel takes the output of the one window whose block holds it, across tile borders too
        expected = np.full_like(mosaic, np.nan)
        for r, c in windows.tolist():
            r0, c0, r1, c1 = grid.block(r, c)
            expected[:, r0:r1, c0:c1] = truth[:, r + size // 2, c + size // 2, None, None]
        np.testing.assert_allclose(mosaic, expected, atol=1e-6)


@pytest.mark.parametrize("extent", [128, 137])
def test_a_constant_output_gives_a_constant_map_and_invalid_pixels_give_nodata(extent: int) -> None:
    size, stride, tile_px = 32, 24, 48
    windows = windows_of(extent, size, stride)
    grid = grid_of(windows, size, stride)
    for tile in grid.tiles(tile_px):
        members = [
            (r, c)
            for r, c in windows.tolist()
            if tile in set(grid.touched(r, c, tile_px, False)) | {grid.home(r, c, tile_px)}
        ]
        acc = TileAccumulator(grid, tile, tile_px, len(members), None, embeddings=False, classes=3)
        for r, c in members:
            valid = np.ones((size, size), bool)
            valid[:, :4] = c != 0  # the first column of windows sees no sensor on its left 4 px
            acc.add(f"item:{r}:{c}", r, c, True, True, np.array([0.1, 0.7, 0.2]), valid, None)
        classes = acc.products(["classes"]).classes
        assert classes is not None
        _, c0, h, w = grid.tile_window(*tile, tile_px)
        expected = np.ones((h, w), np.uint8)
        if c0 == 0:
            expected[:, :4] = CLASS_NODATA
        np.testing.assert_array_equal(classes, expected)


def test_windows_flush_with_an_edge_keep_off_the_coarse_embedding_grid() -> None:
    """Each coarse pixel holds the vector of the regular window centred there, never a flush window's."""
    size, stride, tile_px = 32, 24, 64
    windows = windows_of(141, size, stride)
    grid = grid_of(windows, size, stride)
    vectors: dict[tuple[int, int], int] = {}
    for tile in grid.tiles(tile_px):
        homed = [(r, c) for r, c in windows.tolist() if grid.home(r, c, tile_px) == tile]
        acc = TileAccumulator(grid, tile, tile_px, len(homed), None, embeddings=True)
        for r, c in homed:
            acc.add(f"item:{r}:{c}", r, c, True, True, None, np.ones((size, size), bool), np.array([r, c], float))
        out = acc.products(["embeddings"])
        assert out.vectors is not None and len(out.vectors[0]) == len(homed)  # the GeoParquet has every window
        assert out.embeddings is not None and out.emb_scale is not None and out.emb_offset is not None
        k_r0, k_c0, hc, wc = grid.coarse_window(*tile, tile_px)
        for i in range(hc):
            for j in range(wc):
                q = out.embeddings[:, i, j]
                if q[0] != -128:
                    vectors[(k_r0 + i, k_c0 + j)] = 1
                    np.testing.assert_allclose(
                        q * out.emb_scale + out.emb_offset, [(k_r0 + i) * stride, (k_c0 + j) * stride], atol=0.5
                    )
    regular = [(r, c) for r, c in windows.tolist() if r % stride == 0 and c % stride == 0]
    assert len(vectors) == len(regular) == 25 < len(windows)


def test_config_names_what_is_missing() -> None:
    base = {
        "kind": "predict",
        "catalog": {"backend": "static", "url": "/x/catalog.json"},
        "aoi": {"bbox": [9, 45, 9.1, 45.1]},
        "output": "/tmp/out",
        "run": {"name": "r"},
    }
    with pytest.raises(ConfigError, match="need `model`"):
        parse_config({**base, "products": ["classes"]}, "p.yaml", PredictConfig)
    with pytest.raises(ConfigError, match="at most half"):
        parse_config({**base, "model": "models:/m@a", "window_px": 32, "overlap_px": 20}, "p.yaml", PredictConfig)
    with pytest.raises(ConfigError, match="aoi: give bbox, geojson or item_ids"):
        parse_config(
            {**base, "model": "models:/m@a", "aoi": {"datetime": "2024-01-01/2024-02-01"}}, "p.yaml", PredictConfig
        )
    cfg = parse_config({**base, "embedding_model": "models:/b@c", "products": ["embeddings"]}, "p.yaml", PredictConfig)
    assert cfg.model is None and cfg.products == ["embeddings"]
