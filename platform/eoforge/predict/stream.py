"""Windows to model outputs on Ray Data: tile-aware reading tasks, then an inference actor pool.

The driver cuts each output tile's windows into read tasks of at most :data:`TASK_WINDOWS`
(:func:`read_tasks`), in tile order. A fixed pool of reading actors (:class:`WindowReader`, whose
open datasets stay warm from task to task) takes the tasks; each groups its windows by source tile
and reads each tile's asset windows once (:func:`eoforge.data.tiles.read_rows`, the same reader
as training). The blocks go to :class:`eoforge.predict.model.WindowPredictor` actors. With
``preserve_order`` the driver receives outputs in task order, so it holds the accumulators of
about one output tile at a time, whatever the area.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.errors import ChipReadError

#: Windows per reading task: a block of 256 windows of 64 px is ~30 MB in storage units.
TASK_WINDOWS = 256

#: Files a reading process keeps open (LRU; an evicted file is closed and GDAL drops its decoded blocks).
#: A read task holds one output tile's windows, so it reads one S2 item (12 bands and SCL) and its S1
#: pair (2 bands per item): 32 leaves room for two such items. Training's readers keep 64 open because
#: every epoch comes back to the same files; predict reads each place once, so more open files only
#: hold caches of places already mapped. Measured (bench/predict.py, 2 vs 20 scenes of 512 px, summed
#: USS of the reading processes): 326 -> 872 MB with 64, 341 -> 722 MB with 32; the inference actor
#: stays flat either way. The rest of the growth is not these caches (docs/benchmarks.md).
PREDICT_OPEN_FILES = 32

#: Plan columns a reading task needs (the reader's row fields plus the window's identity).
READ_COLUMNS = [
    "chip_id",
    "crs",
    "transform",
    "size_px",
    "s2_assets",
    "s1_assets",
    "scl_href",
    "s2_radiometry",
    "s1_product",
    "s1_units",
    "s1_calibration",
    "access",
]


def read_tasks(tile_key: str, rows: list[dict[str, Any]], home: list[bool]) -> list[dict[str, Any]]:
    """One tile's windows as read tasks: ``tile`` (key), ``rows`` (JSON plan rows), ``home`` (JSON bools)."""
    tasks = []
    for i in range(0, len(rows), TASK_WINDOWS):
        tasks.append(
            {
                "tile": tile_key,
                "rows": json.dumps(rows[i : i + TASK_WINDOWS]),
                "home": json.dumps(home[i : i + TASK_WINDOWS]),
            }
        )
    return tasks


def _empty_block(n: int, size: int) -> dict[str, np.ndarray]:
    return {
        "tile": np.full(n, "", dtype=object),
        "chip_id": np.full(n, "", dtype=object),
        "home": np.zeros(n, bool),
        "s1": np.zeros((n, len(S1_BAND_NAMES), size, size), np.float16),
        "s2": np.zeros((n, len(S2_BAND_NAMES), size, size), np.uint16),
        "valid": np.zeros((n, 2, size, size), bool),
        "valid_fraction": np.zeros(n, np.float32),
        "ok": np.zeros(n, bool),
        "read_failed": np.zeros(n, bool),
        "error": np.full(n, "", dtype=object),
    }


def read_block(
    tile: str, rows: list[dict[str, Any]], home: list[bool], min_valid_fraction: float, cache: Any
) -> dict[str, np.ndarray]:
    """Read one task's windows into a block (see module docstring); a window not predicted has ``ok`` False.

    A window is not predicted when its read failed (``read_failed``: a missing or unreadable asset,
    implausible values) or when its smaller sensor share of valid pixels is under
    ``min_valid_fraction`` (clouds, the scene's edge): that one is nodata by design, not a failure.

    Returns:
        ``tile``, ``chip_id``: str [B]; ``home``, ``ok``, ``read_failed``: bool [B]; ``s2`` uint16
        [B, 12, H, W] (reflectance x 10000), ``s1`` float16 [B, 2, H, W] (dB), ``valid`` bool
        [B, 2, H, W] (S2, S1); ``valid_fraction`` float32 [B]; ``error`` str [B] (why not ``ok``).
    """
    from eoforge.data.tiles import group_rows, read_rows

    out = _empty_block(len(rows), int(rows[0]["size_px"]))
    out["tile"][:] = tile
    out["home"][:] = home
    for _key, idx in group_rows(rows, cache):
        group = [rows[i] for i in idx]
        for pos, row, res in zip(idx, group, read_rows(group, cache, (out, idx)), strict=True):
            out["chip_id"][pos] = str(row["chip_id"])
            if isinstance(res, ChipReadError):
                out["error"][pos] = f"window {row['chip_id']}: {res}"
                out["read_failed"][pos] = True
            elif res.valid_fraction < min_valid_fraction:
                out["error"][pos] = f"window {row['chip_id']}: valid fraction {res.valid_fraction:.2f}"
            else:
                out["ok"][pos] = True
            out["valid_fraction"][pos] = 0.0 if isinstance(res, ChipReadError) else res.valid_fraction
            if not out["ok"][pos]:
                out["s1"][pos], out["s2"][pos], out["valid"][pos] = 0, 0, False
    return out


class WindowReader:
    """Ray Data UDF of one reading actor: read tasks (``tile``, ``rows``, ``home``) -> window blocks.

    The job runs ``inference.read_tasks`` of these for its whole area, so the reading processes,
    each with its :data:`PREDICT_OPEN_FILES` open datasets and GDAL blocks, are as many on 10 km2
    as on 10,000 (plain tasks in Ray's worker pool spread a large area over more processes, and
    each one kept its files and caches after: docs/benchmarks.md, "Predict").
    """

    def __init__(self, min_valid_fraction: float) -> None:
        from eoforge.data.reader_task import process_cache

        self.min_valid_fraction = min_valid_fraction
        # the process's cache: its files are closed at exit, before rasterio is torn down
        self.cache = process_cache(PREDICT_OPEN_FILES)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """One block (:func:`read_block`) per read task of ``batch``."""
        for tile, rows, home in zip(batch["tile"], batch["rows"], batch["home"], strict=True):
            rows_, home_ = json.loads(str(rows)), json.loads(str(home))
            yield read_block(str(tile), rows_, home_, self.min_valid_fraction, self.cache)


def window_outputs(
    tasks: list[dict[str, Any]], models: dict[str, Any], tracking_uri: str, cfg: Any
) -> Iterator[dict[str, np.ndarray]]:
    """Stream the tasks through reading and inference; yields output blocks in task order.

    Args:
        tasks: :func:`read_tasks` of every pending tile, in tile order.
        models: :meth:`eoforge.predict.model.PredictModels.to_dict`.
        tracking_uri: where the registered models' weights are downloaded from (once, for every actor).
        cfg: the job's :class:`~eoforge.config.predict.PredictConfig`.
    """
    import ray.data

    from eoforge.predict.model import PredictModels, WindowPredictor, share_weights

    inf = cfg.inference
    weights = share_weights(PredictModels.from_dict(models), tracking_uri)
    ds = ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks)))
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False
    # readers are faster than inference on CPU: unbounded, they fill the object store with blocks that wait,
    # and the processes' resident pages grow with the area (docs/benchmarks.md, "Predict")
    ds.context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=inf.inflight_bytes()
    )
    ds = ds.map_batches(
        WindowReader,
        batch_size=1,
        fn_constructor_kwargs={"min_valid_fraction": cfg.min_valid_fraction},
        compute=ray.data.ActorPoolStrategy(size=inf.read_tasks),
        num_cpus=inf.read_cpus,
    )
    ds = ds.map_batches(
        WindowPredictor,
        fn_constructor_kwargs={"models": models, "weights": weights},
        batch_size=inf.batch_size,
        compute=ray.data.ActorPoolStrategy(size=inf.actors),
        num_gpus=1 if inf.use_gpu else 0,
        num_cpus=inf.cpus_per_actor,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
