"""Output geometry and assembly of the predict job (no Ray): blocks, tiles, blending, nodata, config checks."""

from __future__ import annotations

import numpy as np
import pytest
from eoforge.config import parse_config
from eoforge.config.predict import PredictConfig
from eoforge.errors import ConfigError
from eoforge.predict.assemble import CLASS_NODATA, TileAccumulator
from eoforge.predict.grid import ItemGrid, blend_weights, item_grid


def windows_of(extent: int, size: int, stride: int, first: int = 0) -> np.ndarray:
    starts = np.arange(first, extent - size + 1, stride)
    return np.array([(r, c) for r in starts for c in starts], dtype=np.int64)


def grid_of(windows: np.ndarray, size: int, stride: int) -> ItemGrid:
    r, c = windows[0]
    return item_grid(
        "item", "EPSG:32632", [10.0, 0, 500000 + c * 10.0, 0, -10.0, 5000000 - r * 10.0], windows, size, stride
    )


@pytest.mark.parametrize(("extent", "size", "stride", "first"), [(128, 32, 24, 0), (200, 64, 48, 16), (96, 32, 32, 0)])
def test_window_blocks_cover_the_extent_once(extent: int, size: int, stride: int, first: int) -> None:
    windows = windows_of(extent, size, stride, first)
    grid = grid_of(windows, size, stride)
    count = np.zeros((grid.rows, grid.cols), int)
    for r, c in windows.tolist():
        r0, c0, r1, c1 = grid.block(r, c)
        count[r0:r1, c0:c1] += 1
    assert (count[first:, first:] == 1).all()
    assert (count[:first] == 0).all() and (count[:, :first] == 0).all()


@pytest.mark.parametrize("blend", ["hann", "cosine", "none"])
@pytest.mark.parametrize("per_pixel", [True, False])
def test_position_dependent_outputs_show_no_step_at_window_or_tile_borders(blend: str, per_pixel: bool) -> None:
    """Windows that agree on every pixel (a function of the position) give exactly that function, tile by tile."""
    size, stride, tile_px = 32, 24, 40
    windows = windows_of(128, size, stride)
    grid = grid_of(windows, size, stride)
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


def test_a_constant_output_gives_a_constant_map_and_invalid_pixels_give_nodata() -> None:
    size, stride, tile_px = 32, 24, 48
    windows = windows_of(128, size, stride)
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
