"""Tile-aware streaming: same pixels as read_chip, resampler vs GDAL, diversity, resume without reads."""

from __future__ import annotations

import json
from pathlib import Path

import cachetools
import numpy as np
import pytest
import rasterio
import torch
from eoforge.bands import S1_BAND_NAMES
from eoforge.data.chip import read_chip, read_chip_raw
from eoforge.data.dataset import (
    batch_diversity,
    epoch_window_sets,
    epoch_windows,
    iter_chip_blocks,
    plan_windows,
    process_cache,
    read_chip_task,
    shardable_windows,
)
from eoforge.data.grid import ChipGrid
from eoforge.data.normalize import S1_DB_MEAN, S1_DB_STD, S2_L2A_MEAN, S2_L2A_STD, normalize, normalize_batch
from eoforge.data.resample import (
    ChipGridKey,
    SourceGrid,
    apply_map,
    mosaics,
    pixel_centres,
    reproject_centres,
    sample_map,
)
from eoforge.data.tiles import DatasetCache, read_band_cuts
from eoforge.plan.io import read_plan
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.transform import Affine

from tests.support.demo_plan import demo_plan as plan_demo_catalog
from tests.support.gdal_reference import read_band
from tests.support.provider_items import write_tif


@pytest.fixture(scope="module")
def demo_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiles")
    return plan_demo_catalog(tmp, chip_px=64)


def _rows(plan: Path) -> dict[str, dict]:
    frame, _ = read_plan(plan)
    return {r["chip_id"]: r for r in frame.drop(columns="geometry").to_dict("records")}


def _stream(plan: Path, skip_rows: int = 0, mix: int = 1, **kw: object) -> list[dict[str, np.ndarray]]:
    windows = epoch_window_sets(plan_windows(str(plan), "all", 16), 7, 1, (0, 1), skip_rows, mix)
    return list(iter_chip_blocks(str(plan), windows, split="all", window_rows=16, min_valid_fraction=0.0, **kw))


def test_chips_below_the_valid_fraction_leave_empty_rows_in_their_block(demo_plan: Path) -> None:
    """Chips are assembled straight into their block's rows; one that then fails its check is cleared again."""
    windows = epoch_window_sets(plan_windows(str(demo_plan), "all", 16), 7, 1, (0, 1), 0, 1)
    kept, dropped = (
        list(iter_chip_blocks(str(demo_plan), windows, split="all", window_rows=16, min_valid_fraction=f))
        for f in (0.0, 1.01)  # every chip passes / every chip fails (a fraction is at most 1)
    )
    assert all(b["ok"].all() for b in kept) and not any(b["ok"].any() for b in dropped)
    assert all((b["s2"] > 0).any() and b["valid"].any() for b in kept)
    for b in dropped:
        assert not b["s2"].any() and not b["s1"].any() and not b["valid"].any()
        assert all("valid fraction" in e for e in b["error"]) and (b["valid_fraction"] > 0).any()


def test_tile_aware_streaming_yields_the_same_pixels_as_read_chip(demo_plan: Path) -> None:
    rows = _rows(demo_plan)
    blocks = _stream(demo_plan, shuffle_rows=32)
    ids = [c for b in blocks for c in b["chip_id"]]
    assert sorted(ids) == sorted(rows)  # every row of the plan, once
    for b in blocks:
        assert b["s2"].dtype == np.uint16 and b["s1"].dtype == np.float16 and b["valid"].dtype == bool
        for i, chip_id in enumerate(b["chip_id"]):
            assert b["ok"][i], b["error"][i]
            raw = read_chip_raw(rows[chip_id])
            assert np.array_equal(b["s2"][i], raw.s2), chip_id  # all 12 bands, 10/20/60 m
            assert np.array_equal(b["s1"][i], raw.s1), chip_id  # S1 (another CRS), both polarisations
            assert np.array_equal(b["valid"][i], raw.valid), chip_id
            assert np.array_equal(b["label"][i], raw.label if raw.label is not None else b["label"][i])
            # read_chip is the same pixels, normalised
            chip = read_chip(rows[chip_id], "ssl4eo")
            assert np.array_equal(
                chip.s2, normalize(raw.s2.astype(np.float32), S2_L2A_MEAN, S2_L2A_STD, raw.valid[0], "ssl4eo")
            )
            assert np.array_equal(
                chip.s1, normalize(raw.s1.astype(np.float32), S1_DB_MEAN, S1_DB_STD, raw.valid[1], "ssl4eo")
            )


def test_normalize_batch_on_device_matches_numpy(demo_plan: Path) -> None:
    b = _stream(demo_plan, shuffle_rows=8)[0]
    s2, s1 = normalize_batch(
        torch.from_numpy(b["s2"]), torch.from_numpy(b["s1"]), torch.from_numpy(b["valid"]), "ssl4eo"
    )
    assert s2.dtype == torch.float32 and s1.dtype == torch.float32
    for i in range(len(b["chip_id"])):
        ref2 = normalize(b["s2"][i].astype(np.float32), S2_L2A_MEAN, S2_L2A_STD, b["valid"][i, 0], "ssl4eo")
        ref1 = normalize(b["s1"][i].astype(np.float32), S1_DB_MEAN, S1_DB_STD, b["valid"][i, 1], "ssl4eo")
        assert np.allclose(s2[i].numpy(), ref2, atol=1e-5) and np.allclose(s1[i].numpy(), ref1, atol=1e-5)
        assert (s2[i].numpy()[:, ~b["valid"][i, 0]] == 0).all()
        assert (s1[i].numpy()[:, ~b["valid"][i, 1]] == 0).all()


def test_s1_under_an_s2_cloud_stays_valid_in_the_reader_and_after_normalisation(demo_plan: Path) -> None:
    """A cloud hides S2 only: SAR sees through it, so S1 keeps its pixels where S2 is masked."""
    blocks = _stream(demo_plan, shuffle_rows=32)
    s2_valid = np.concatenate([b["valid"][:, 0] for b in blocks])
    s1_valid = np.concatenate([b["valid"][:, 1] for b in blocks])
    clouded = ~s2_valid  # S2 pixels masked by SCL (cloud, shadow) or nodata
    assert clouded.any(), "the demo plan has cloudy chips"
    assert s1_valid[clouded].mean() > 0.99  # S1 is valid under the clouds
    s1_db = np.concatenate([b["s1"] for b in blocks]).astype(np.float32)
    assert (s1_db[:, 0][clouded] < -1.0).mean() > 0.9  # real backscatter there, not the 0 of a masked pixel
    s2n, s1n = normalize_batch(
        *(torch.from_numpy(np.concatenate([b[k] for b in blocks])) for k in ("s2", "s1", "valid")), "ssl4eo"
    )
    assert (s2n.permute(1, 0, 2, 3)[:, torch.from_numpy(clouded)] == 0).all()
    assert (s1n.permute(1, 0, 2, 3)[:, torch.from_numpy(clouded)] != 0).float().mean() > 0.99
    # read alone, the chip has the same per-sensor masks
    rows = _rows(demo_plan)
    ids = [c for b in blocks for c in b["chip_id"]]
    cloudy_chip = ids[int(np.argmax(clouded.reshape(len(ids), -1).mean(axis=1)))]
    raw = read_chip_raw(rows[cloudy_chip])
    assert raw.valid.shape[0] == 2 and (~raw.valid[0]).any() and raw.valid[1][~raw.valid[0]].all()


def test_resampler_matches_gdal_warp_on_a_smooth_field(tmp_path: Path) -> None:
    # a 20 m band (smooth ramp, nodata 0 in one corner) read onto a 10 m chip grid half a pixel off
    n = 64
    yy, xx = np.mgrid[0:n, 0:n]
    arr = (1000 + 7 * xx + 3 * yy).astype(np.uint16)
    arr[:5, :5] = 0
    path = write_tif(tmp_path / "b05.tif", arr, "EPSG:32632", Affine(20, 0, 500000, 0, -20, 5000000), nodata=0)
    grid = ChipGrid("EPSG:32632", Affine(10, 0, 500050, 0, -10, 4999950), 48)
    gdal = read_band(str(path), grid, Resampling.bilinear, 0.0)
    with rasterio.open(path) as src:
        sg = SourceGrid(src.crs.to_string(), tuple(src.transform)[:6], src.width, src.height)
        m = sample_map(sg, ChipGridKey(grid.crs, tuple(grid.transform)[:6], grid.size), "bilinear")
        r0, r1, c0, c1 = m.bbox
        ours = apply_map(m, src.read(1)[r0:r1, c0:c1], (r0, c0), 0, 0.0)
    both = (gdal > 0) & (ours > 0)
    assert both.mean() > 0.9
    # stated tolerance: 0.5 DN on a ramp of 3.5 DN per 10 m pixel (GDAL's approximate transformer)
    assert np.abs(gdal - ours)[both].max() <= 0.5
    # and another CRS (UTM 33 source): within 1% of the ramp's range
    path33 = write_tif(tmp_path / "b33.tif", arr, "EPSG:32633", Affine(20, 0, 80000, 0, -20, 5010000), nodata=0)
    with rasterio.open(path33) as src:
        sg = SourceGrid(src.crs.to_string(), tuple(src.transform)[:6], src.width, src.height)
    # the source's centre (UTM 33) in UTM 32, and a 32 px chip around it
    x, y = Transformer.from_crs("EPSG:32633", "EPSG:32632", always_xy=True).transform(80640.0, 5009360.0)
    x, y = x - 160, y + 160
    grid = ChipGrid("EPSG:32632", Affine(10, 0, round(x), 0, -10, round(y)), 32)
    gdal = read_band(str(path33), grid, Resampling.bilinear, 0.0)
    with rasterio.open(path33) as src:
        m = sample_map(sg, ChipGridKey(grid.crs, tuple(grid.transform)[:6], grid.size), "bilinear")
        r0, r1, c0, c1 = m.bbox
        ours = apply_map(m, src.read(1)[r0:r1, c0:c1], (r0, c0), 0, 0.0)
    both = (gdal > 0) & (ours > 0)
    assert both.mean() > 0.9 and np.abs(gdal - ours)[both].max() <= 0.01 * float(np.ptp(arr[arr > 0]))


def test_demo_s2_and_s1_agree_with_gdal(demo_plan: Path) -> None:
    row = next(iter(_rows(demo_plan).values()))
    grid = ChipGrid(str(row["crs"]), Affine(*list(row["transform"])[:6]), int(row["size_px"]))
    raw = read_chip_raw(row)
    b05 = read_band(json.loads(row["s2_assets"])["B05"], grid, Resampling.bilinear, 0.0)
    ok = raw.valid[0] & (b05 > 0)
    assert np.abs(raw.s2[4][ok].astype(np.float32) - b05[ok]).mean() < 15  # DN; noisy synthetic field
    vv_href = json.loads(row["s1_assets"])[S1_BAND_NAMES[0]]
    vv = read_band(vv_href, grid, Resampling.bilinear, np.nan)
    ok = raw.valid[1] & np.isfinite(vv)
    # speckled S1 finer than 10 m: GDAL widens the bilinear kernel, we take the 4 nearest centres
    assert np.corrcoef(raw.s1[0][ok].astype(np.float32), vv[ok])[0, 1] > 0.95
    assert abs(float(np.mean(raw.s1[0][ok].astype(np.float32) - vv[ok]))) < 0.1  # no bias, no shift


def test_batches_mix_tiles_and_report_diversity(demo_plan: Path) -> None:
    keys = np.concatenate([b["tile_key"] for b in _stream(demo_plan, shuffle_rows=32)])
    assert batch_diversity(["a"] * 8) == {"distinct_tiles": 1.0, "same_tile_pair_share": 1.0}
    d = [batch_diversity(keys[i : i + 8]) for i in range(0, len(keys) - 7, 8)]
    assert np.mean([x["distinct_tiles"] for x in d]) >= 3  # not one tile per batch
    assert np.mean([x["same_tile_pair_share"] for x in d]) < 0.5


def test_window_sets_mix_places_and_scenes_into_each_batch(demo_plan: Path) -> None:
    rows = _rows(demo_plan)

    def items_per_batch(mix: int) -> float:
        ids = [c for b in _stream(demo_plan, mix=mix, shuffle_rows=32) for c in b["chip_id"]]
        assert sorted(ids) == sorted(rows)  # every row once, whatever the mixing
        return float(np.mean([len({rows[c]["s2_item"] for c in ids[i : i + 8]}) for i in range(0, len(ids) - 7, 8)]))

    assert items_per_batch(1) == 1.0  # a 16-row window is one scene: every batch of 8 from one S2 item
    assert items_per_batch(4) > 1.5


@pytest.mark.parametrize("mix", [1, 2])
def test_resume_skips_rows_without_opening_their_files(
    demo_plan: Path, monkeypatch: pytest.MonkeyPatch, mix: int
) -> None:
    full = [c for b in _stream(demo_plan, mix=mix, shuffle_rows=8) for c in b["chip_id"]]
    assert full == [c for b in _stream(demo_plan, mix=mix, shuffle_rows=8) for c in b["chip_id"]]  # deterministic
    skip = 37  # two whole windows of 16 rows (one set of 2 when mix=2), then 5 rows into the next
    opened: list[str] = []
    real_get = DatasetCache.get

    def counting_get(self: DatasetCache, href: str, sign: object) -> object:
        if href not in self._open:
            opened.append(href)
        return real_get(self, href, sign)  # type: ignore[arg-type]

    monkeypatch.setattr(DatasetCache, "get", counting_get)
    resumed = [c for b in _stream(demo_plan, skip_rows=skip, mix=mix, shuffle_rows=8) for c in b["chip_id"]]
    assert resumed == full[skip:]
    rows = _rows(demo_plan)
    skipped_items = {rows[c]["s2_item"] for c in full[:32]} - {rows[c]["s2_item"] for c in full[skip:]}
    assert len(skipped_items) == 2
    for c in full[:32]:
        if rows[c]["s2_item"] in skipped_items:
            assert not set(json.loads(rows[c]["s2_assets"]).values()) & set(opened), c  # never opened


def test_the_read_tasks_of_later_epochs_reuse_their_process_open_datasets(demo_plan: Path) -> None:
    # the stream's UDF is a plain function run by Ray's pooled workers: what one epoch's task opened
    # stays open in that process for the next epoch's tasks (and the pixels are the same)
    from eoforge.data.epochs import _read_tasks

    def epoch(e: int) -> dict[str, np.ndarray]:
        sets = epoch_window_sets(plan_windows(str(demo_plan), "all", 16), 7, e, (0, 1), 0, 2)
        kw = {"plan_path": str(demo_plan), "split": "all", "min_valid_fraction": 0.0, "seed": 7, "epoch": e}
        kw |= {"window_rows": 16, "shuffle_rows": 8, "max_open": 97}  # a cache size of this test's own
        blocks = []
        for task in _read_tasks(sets, 16):
            batch = {"windows": np.array([task["windows"]], object), "take": np.array([task["take"]])}
            blocks += list(read_chip_task(batch, **kw))
        return {c: s2 for b in blocks for c, s2 in zip(b["chip_id"], b["s2"], strict=True)}

    first = epoch(0)
    cache = process_cache(97)
    opened = cache.opens
    assert opened >= 15 and len(cache) == opened  # every file of the plan's chips, opened once
    second = epoch(1)
    assert cache.opens == opened  # none opened again
    assert sorted(first) == sorted(second) == sorted(_rows(demo_plan))
    assert all(np.array_equal(first[c], second[c]) for c in first)


def test_a_stream_that_does_not_keep_files_open_reopens_them_once_for_itself(demo_plan: Path) -> None:
    # keep_open=False (a stream id per stream): the process's files of an earlier stream are closed,
    # so this stream reads its tiles from the files, each file opened once for all of its tasks
    from eoforge.data.epochs import _read_tasks

    def epoch(e: int, stream: str) -> dict[str, np.ndarray]:
        sets = epoch_window_sets(plan_windows(str(demo_plan), "all", 16), 7, e, (0, 1), 0, 2)
        kw = {"plan_path": str(demo_plan), "split": "all", "min_valid_fraction": 0.0, "seed": 7, "epoch": e}
        kw |= {"window_rows": 16, "shuffle_rows": 8, "max_open": 98, "stream": stream}
        blocks = []
        for task in _read_tasks(sets, 16):
            batch = {"windows": np.array([task["windows"]], object), "take": np.array([task["take"]])}
            blocks += list(read_chip_task(batch, **kw))
        return {c: s2 for b in blocks for c, s2 in zip(b["chip_id"], b["s2"], strict=True)}

    first = epoch(0, "stream-a")
    cache = process_cache(98)
    opened = cache.opens
    assert opened >= 15 and len(cache) == opened
    second = epoch(1, "stream-b")
    assert cache.opens == 2 * opened and len(cache) == opened  # closed, then each opened once again
    assert all(np.array_equal(first[c], second[c]) for c in first)


def test_the_read_tasks_of_a_window_set_share_its_order_by_plan_hash(
    demo_plan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every read task of a set needs the set's whole order: a reading process makes it once, keyed by
    # the plan's hash, so a plan rewritten at the same path is read afresh, not from the old entry
    from eoforge.data import epochs, reader_task
    from eoforge.plan.io import write_plan

    monkeypatch.setattr(reader_task, "_SET_ORDERS", cachetools.LRUCache(maxsize=reader_task.SET_ORDERS_KEPT))
    frame, digest = read_plan(demo_plan)
    plan = tmp_path / "plan.parquet"
    write_plan(frame, plan)
    reads: list[object] = []
    real = reader_task.TileChipReader.window_rows_of
    monkeypatch.setattr(reader_task.TileChipReader, "window_rows_of", lambda self, w: reads.append(w) or real(self, w))

    def stream() -> tuple[int, int, list[tuple[str, str]]]:
        sets = epoch_window_sets(plan_windows(str(plan), "all", 16), 7, 0, (0, 1), 0, 99)  # one set
        kw = {"plan_path": str(plan), "split": "all", "min_valid_fraction": 0.0, "seed": 7, "epoch": 0}
        kw |= {"window_rows": 16, "shuffle_rows": 8, "max_open": 96}
        tasks, out = epochs._read_tasks(sets, 16), []
        for task in tasks:
            batch = {"windows": np.array([task["windows"]], object), "take": np.array([task["take"]])}
            for b in read_chip_task(batch, **kw):
                out += [(str(c), str(s)) for c, s in zip(b["chip_id"], b["split"], strict=True)]
        return sum(len(ws) for ws in sets), len(tasks) - len(sets), out

    windows, extra_tasks, first = stream()
    assert extra_tasks > 0  # sets read by more than one task
    assert len(reads) == windows  # each window's rows read once, not once per task
    assert sorted(c for c, _ in first) == sorted(_rows(demo_plan))
    write_plan(frame.assign(split="test"), plan)  # same rows and windows, another hash
    assert read_plan(plan)[1] != digest
    reads.clear()
    windows, _, second = stream()
    assert len(reads) == windows
    assert [c for c, _ in second] == [c for c, _ in first] and {s for _, s in second} == {"test"}


def test_a_plan_rewritten_at_the_same_path_gets_its_own_windows(demo_plan: Path, tmp_path: Path) -> None:
    from eoforge.plan.io import write_plan

    frame, _ = read_plan(demo_plan)
    plan = tmp_path / "plan.parquet"
    write_plan(frame.iloc[:20], plan)
    assert sum(w.rows for w in plan_windows(str(plan), "all", 16)) == 20
    write_plan(frame, plan)  # the driver's window cache is keyed by the plan's hash, not its path
    assert sum(w.rows for w in plan_windows(str(plan), "all", 16)) == len(frame) > 20


@pytest.mark.parametrize("world", [2, 3])
def test_a_small_plan_gives_every_shard_rows_and_each_row_once(demo_plan: Path, world: int) -> None:
    # one row group, fewer rows than a default window: whole-window sharding alone gives worker 1 nothing
    default = plan_windows(str(demo_plan), "all", 1024)
    assert len(default) == 1
    windows, window_rows = shardable_windows(str(demo_plan), "all", 1024, world)
    assert window_rows < 1024 and len(windows) >= 4 * world
    seen: list[str] = []
    for rank in range(world):
        mine = epoch_windows(windows, 7, 0, (rank, world), 0)
        assert mine, f"shard {rank} of {world} got no rows"
        blocks = iter_chip_blocks(str(demo_plan), mine, split="all", window_rows=window_rows, min_valid_fraction=0.0)
        seen += [c for b in blocks for c in b["chip_id"]]
    assert sorted(seen) == sorted(_rows(demo_plan))


def _pixels(grids: list[ChipGridKey], cuts: list) -> list[np.ndarray]:
    """Each grid's pixels: its place in its mosaic."""
    return [m[dr : dr + g.shape[0], dc : dc + g.shape[1]] for g, (m, dr, dc) in zip(grids, cuts, strict=True)]


@pytest.mark.parametrize("src_crs", ["EPSG:32632", "EPSG:4326"])
def test_a_mosaic_gives_each_chip_the_pixels_it_gets_alone(tmp_path: Path, src_crs: str) -> None:
    # a 20 m source (or a lon/lat one) with nodata holes; 16 px chips on a 10 m lattice, some
    # hanging over the image's edge: cut from one mosaic they must equal the chip sampled alone
    rng = np.random.default_rng(3)
    arr = rng.integers(1, 5000, (40, 40)).astype(np.uint16)
    arr[10:14, 5:30] = 0
    if src_crs == "EPSG:4326":
        transform = Affine(0.00025, 0, 9.0, 0, -0.00025, 45.0)
        x0, y0 = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(9.0, 45.0)
        x0, y0 = round(x0, -1) + 10, round(y0, -1) - 10
    else:
        transform, x0, y0 = Affine(20, 0, 500000, 0, -20, 5000000), 500000.0, 5000000.0
    path = write_tif(tmp_path / "band.tif", arr, src_crs, transform, nodata=0)
    grids = [
        ChipGridKey("EPSG:32632", (10.0, 0.0, x0 + 10 * c, 0.0, -10.0, y0 - 10 * r), 16)
        for r, c in [(-6, -6), (0, 0), (0, 16), (16, 8), (20, 30), (30, 50), (40, 40), (50, 60), (60, 66)]
    ]
    assert max(len(members) for _, members in mosaics(grids)) == len(grids)  # one mosaic
    cache = DatasetCache()
    for kind, fill in (("bilinear", 0.0), ("nearest", 255.0)):
        together = _pixels(grids, read_band_cuts(f"file://{path}", grids, kind, fill, cache, None))
        for g, got in zip(grids, together, strict=True):
            (alone,) = _pixels([g], read_band_cuts(f"file://{path}", [g], kind, fill, cache, None))
            assert got.shape == (16, 16) and np.array_equal(got, alone), (kind, g.transform)
        for edge in (together[0], together[-1]):  # chips hanging over the image's edges
            assert (edge == fill).any() and (edge != fill).any()
    cache.close()


def test_proj_on_a_node_lattice_is_within_a_hundredth_of_a_pixel() -> None:
    grid = ChipGridKey("EPSG:32632", (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), 200, 300)
    xs, ys = pixel_centres(grid)
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(xs, ys)
    alon, alat = reproject_centres(grid, "EPSG:4326")
    # S1 RTC-like lon/lat pixels of 1e-4 deg (~10 m)
    assert np.abs(alon - lon).max() / 1e-4 < 0.01 and np.abs(alat - lat).max() / 1e-4 < 0.01


def _reference_bilinear(m: object, data: np.ndarray, nodata: float | None, fill: float) -> np.ndarray:
    """GDAL's renormalised bilinear, pixel by pixel: the four neighbours inside and valid, weights renormalised."""
    rows, cols = np.broadcast_to(m.rows, m.shape), np.broadcast_to(m.cols, m.shape)  # type: ignore[attr-defined]
    wr, wc = np.broadcast_to(m.wr, m.shape), np.broadcast_to(m.wc, m.shape)  # type: ignore[attr-defined]
    out = np.full(m.shape, fill, np.float64)  # type: ignore[attr-defined]
    h, w = data.shape
    for i in range(m.shape[0]):  # type: ignore[attr-defined]
        for j in range(m.shape[1]):  # type: ignore[attr-defined]
            acc = wsum = 0.0
            for dr, dc, wk in ((0, 0, (1 - wr[i, j]) * (1 - wc[i, j])), (0, 1, (1 - wr[i, j]) * wc[i, j]),
                               (1, 0, wr[i, j] * (1 - wc[i, j])), (1, 1, wr[i, j] * wc[i, j])):  # fmt: skip
                r, c = rows[i, j] + dr, cols[i, j] + dc
                if 0 <= r < h and 0 <= c < w and np.isfinite(data[r, c]) and data[r, c] != nodata:
                    acc += wk * float(data[r, c])
                    wsum += wk
            if wsum > 1e-5:
                out[i, j] = acc / wsum
    return out


@pytest.mark.parametrize("src_crs", ["EPSG:32632", "EPSG:4326"])  # a separable map, and a full one
@pytest.mark.parametrize("holes", [False, True])
def test_bilinear_renormalises_over_valid_neighbours_like_gdal(tmp_path: Path, src_crs: str, holes: bool) -> None:
    # a 20 m (or lon/lat) source; a 10 m grid hanging over its top-left corner and, with holes, nodata inside
    rng = np.random.default_rng(5)
    arr = rng.integers(1, 5000, (24, 24)).astype(np.uint16)
    if holes:
        arr[6:9, 4:15] = 0
        arr[15, 15] = 0
    if src_crs == "EPSG:4326":
        transform = Affine(0.00025, 0, 9.0, 0, -0.00025, 45.0)
        x0, y0 = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(9.0, 45.0)
        x0, y0 = round(x0, -1) - 30, round(y0, -1) + 30
    else:
        transform, x0, y0 = Affine(20, 0, 500000, 0, -20, 5000000), 499970.0, 5000030.0
    sg = SourceGrid(src_crs, tuple(transform)[:6], 24, 24)
    m = sample_map(sg, ChipGridKey("EPSG:32632", (10.0, 0.0, x0, 0.0, -10.0, y0), 40), "bilinear")
    assert m.separable == (src_crs == "EPSG:32632") and not m.inside
    r0, r1, c0, c1 = m.bbox
    ours = apply_map(m, arr[r0:r1, c0:c1], (r0, c0), 0, -1.0)
    ref = _reference_bilinear(
        type(m)(m.kind, m.shape, m.rows - r0, m.cols - c0, m.wr, m.wc, m.bbox), arr[r0:r1, c0:c1], 0, -1.0
    )
    assert ours.dtype == np.float32 and (ours == -1).any() == (ref == -1).any()
    assert np.allclose(ours, ref, rtol=1e-5, atol=1e-2)


def test_a_tile_group_reads_each_file_once(demo_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every band file of a tile group is read once for all its chips (S1 too: its NaN fill once made
    # a distinct job per chip, reading S1 chip by chip)
    import eoforge.data.tiles as tiles

    rows = list(_rows(demo_plan).values())
    group = next(idx for _, idx in tiles.group_rows(rows, DatasetCache()) if len(idx) > 1)
    calls: list[tuple[str, int]] = []
    real = tiles.read_band_cuts

    def counting(href: str, grids: list, *args: object, **kwargs: object) -> list[tiles.Cut]:
        calls.append((href, len(grids)))
        return real(href, grids, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tiles, "read_band_cuts", counting)
    out = tiles.read_rows([rows[i] for i in group], DatasetCache())
    assert all(isinstance(c, tiles.RawChip) for c in out)
    hrefs = [h for h, _ in calls]
    assert len(hrefs) == len(set(hrefs)) and {n for _, n in calls} == {len(group)}
    s1 = {json.loads(rows[i]["s1_assets"])[b] for i in group for b in S1_BAND_NAMES}
    assert s1 <= set(hrefs)


def test_a_chip_that_cannot_be_assembled_gets_its_error_and_the_others_are_read(demo_plan: Path) -> None:
    import eoforge.data.tiles as tiles

    rows = list(_rows(demo_plan).values())[:4]
    bad = dict(rows[1], s1_units="furlongs")  # unknown S1 units: refused with the reason, not a crash
    out = tiles.read_rows([rows[0], bad, rows[2], rows[3]], DatasetCache())
    assert isinstance(out[1], tiles.ChipReadError) and "furlongs" in str(out[1])
    assert all(isinstance(c, tiles.RawChip) for c in (out[0], out[2], out[3]))


def test_sample_maps_are_kept_by_bytes_and_the_oldest_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # a scene's tile groups need ~20 maps: a bound by count (16) evicted each before its next use
    # the cache lives in eoforge.data.sample_maps (resample re-exports sample_map): patch it there
    import eoforge.data.sample_maps as sample_maps

    src = SourceGrid("EPSG:32632", (20.0, 0.0, 500000.0, 0.0, -20.0, 5000000.0), 512, 512)
    grids = [ChipGridKey("EPSG:32632", (10.0, 0.0, 500000.0 + 640 * k, 0.0, -10.0, 5000000.0), 64) for k in range(30)]
    sample_maps.clear_sample_maps()
    first = [sample_maps.sample_map(src, g, "bilinear") for g in grids]
    assert all(sample_map(src, g, "bilinear") is m for g, m in zip(grids, first, strict=True))
    one = sample_maps._map_bytes(first[0])
    small = cachetools.LRUCache(maxsize=10 * one, getsizeof=sample_maps._map_bytes)
    monkeypatch.setattr(sample_maps, "_MAPS", small)
    maps = [sample_map(src, g, "bilinear") for g in grids]  # the re-exported name reaches the patched cache
    assert len(small) == 10 and small.currsize == 10 * one
    assert sample_map(src, grids[-1], "bilinear") is maps[-1]  # the newest kept
    assert sample_map(src, grids[0], "bilinear") is not maps[0]  # the oldest made again
    sample_maps.clear_sample_maps()
