"""Per-pixel embeddings (``embeddings.mode: pixel``) without Ray: feature maps, blending, quantisation, guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eoforge.errors import ConfigError
from eoforge.models.dual import DualBackbone, create_backbone
from eoforge.predict import assemble
from eoforge.predict.assemble import EMB_NODATA, TileAccumulator
from eoforge.predict.grid import blend_weights, item_grid
from eoforge.predict.model import ModelRef, _feature_maps, _features, check_feature_maps

from tests.unit.test_predict_grid import windows_of


def test_feature_maps_are_the_pooled_features_per_pixel() -> None:
    """Same width and channel order as the pooled vector; averaging the backbone's maps gives that vector."""
    torch.manual_seed(0)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18").eval()
    s1, s2 = torch.randn(2, 2, 64, 64), torch.randn(2, 12, 64, 64)
    with torch.inference_mode():
        fmap = _feature_maps(backbone, s1, s2)
        pooled = _features(backbone, s1, s2)
        raw = [
            backbone.encoder(m).forward_intermediates(x, intermediates_only=True)[-1]
            for m, x in (("s1", s1), ("s2", s2))
        ]
    assert fmap.shape == (2, pooled.shape[1], 64, 64)
    torch.testing.assert_close(torch.cat([r.mean(dim=(2, 3)) for r in raw], dim=1), pooled, rtol=1e-4, atol=1e-5)


def test_a_model_without_feature_maps_is_refused_for_pixel_embeddings() -> None:
    stats = ModelRef("models:/bs/1", "models:/bs@c", "bs", "1", {"architecture": {"kind": "band_stats"}})
    with pytest.raises(ConfigError, match=r"has no feature maps.*'band_stats'"):
        check_feature_maps(stats)
    tuned = {"architecture": {"kind": "finetune", "backbone": {"kind": "dual_backbone"}}}
    check_feature_maps(ModelRef("models:/ft/1", "models:/ft@c", "ft", "1", tuned))


@pytest.mark.parametrize("extent", [128, 141])
def test_pixel_embeddings_blend_to_the_position_dependent_truth_across_tiles(extent: int) -> None:
    """Windows that agree on each pixel's features give those features, within int8 quantisation."""
    size, stride, tile_px = 32, 24, 40
    windows = windows_of(extent, size, stride)
    grid = item_grid("item", "EPSG:32632", [10.0, 0, 500000, 0, -10.0, 5000000], windows, size, stride)
    yy, xx = np.mgrid[0:extent, 0:extent].astype(np.float32)
    truth = np.stack([np.sin(xx / 13), np.cos(yy / 7) * 3, xx - yy])  # [3, rows, cols]
    for tile in grid.tiles(tile_px):
        members = [(r, c) for r, c in windows.tolist() if tile in set(grid.touched(r, c, tile_px, True))]
        acc = TileAccumulator(grid, tile, tile_px, len(members), None, True, 0, blend_weights(size, "hann"))
        for r, c in members:
            valid = np.ones((size, size), bool)
            valid[:, :5] = c != 0  # no sensor on the item's first 5 columns
            fmap = truth[:, r : r + size, c : c + size].astype(np.float16)
            home = grid.home(r, c, tile_px) == tile
            acc.add(f"item:{r}:{c}", r, c, home, True, None, valid, fmap.mean(axis=(1, 2)), fmap)
        out = acc.products(["embeddings"])
        r0, c0, h, w = grid.tile_window(*tile, tile_px)
        assert out.embeddings is not None and out.embeddings.shape == (3, h, w)
        assert out.emb_scale is not None and out.emb_offset is not None
        q = out.embeddings.astype(np.float64)
        nodata = out.embeddings[0] == EMB_NODATA
        want = truth[:, r0 : r0 + h, c0 : c0 + w].astype(np.float16).astype(np.float64)
        expected_nodata = np.zeros((h, w), bool)
        if c0 == 0:
            expected_nodata[:, :5] = True
        np.testing.assert_array_equal(nodata, expected_nodata)
        decoded = q * out.emb_scale[:, None, None] + out.emb_offset[:, None, None]
        err = np.abs(decoded - want)[:, ~nodata]
        assert (err <= out.emb_scale[:, None] * 0.5 + 1e-3 * np.abs(want[:, ~nodata]) + 1e-6).all()


def test_a_tile_too_large_for_pixel_embeddings_names_the_tile_size_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assemble, "MAX_PIXEL_EMBEDDING_BYTES", 64 * 64 * 4 * 8)  # 8 bands of 64 x 64 px
    windows = windows_of(128, 32, 24)
    grid = item_grid("item", "EPSG:32632", [10.0, 0, 500000, 0, -10.0, 5000000], windows, 32, 24)
    acc = TileAccumulator(grid, (0, 0), 128, 1, None, True, 0, blend_weights(32, "hann"))
    fmap = np.zeros((16, 32, 32), np.float16)
    with pytest.raises(ConfigError, match="set tile_px to 45 or less"):
        acc.add("item:0:0", 0, 0, True, True, None, np.ones((32, 32), bool), np.zeros(16), fmap)
