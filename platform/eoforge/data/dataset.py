"""Ray Data pipeline: chip plan -> chip pixels, streamed to training workers.

The plan's rows (metadata only, one per chip) are split into several blocks so several CPU
actors read COG windows in parallel, then ``map_batches(ChipBatchReader)`` turns rows into

- ``s1``: float32 [B, 2, H, W], ``s2``: float32 [B, 12, H, W] (see :mod:`eoforge.data.reader`),
- ``valid_fraction``: float32 [B], ``label``: uint8 [B, H, W] (255 where the plan has none),
- ``chip_id``: str [B], ``split``: str [B], ``item_labels``: str [B] (JSON list of class names),
- ``ok``: bool [B], ``error``: str [B].

A chip whose asset is missing or corrupt, or whose valid fraction is below the threshold,
comes out with ``ok = False`` and the reason in ``error`` instead of failing the job; the
training loop drops and counts these rows (:func:`split_ok`), and the count reaches MLflow.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from eoforge.catalog.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.data.reader import read_chip
from eoforge.errors import ChipReadError
from eoforge.plan.io import read_stream_table

log = logging.getLogger(__name__)


class ChipBatchReader:
    """Ray Data UDF: plan rows (dict of numpy columns) -> chip tensors (dict of numpy arrays)."""

    def __init__(self, normalize: str = "ssl4eo", min_valid_fraction: float = 0.5) -> None:
        self.normalize = normalize
        self.min_valid_fraction = min_valid_fraction

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Read every chip of the batch; failures become ``ok=False`` rows."""
        n = len(batch["chip_id"])
        size = int(batch["size_px"][0]) if n else 0
        out: dict[str, Any] = {
            "chip_id": np.asarray(batch["chip_id"], dtype=object),
            "split": np.asarray(batch["split"], dtype=object) if "split" in batch else np.full(n, "", dtype=object),
            "item_labels": (
                np.asarray(batch["item_labels"], dtype=object) if "item_labels" in batch else np.full(n, "[]", object)
            ),
            "s1": np.zeros((n, len(S1_BAND_NAMES), size, size), np.float32),
            "s2": np.zeros((n, len(S2_BAND_NAMES), size, size), np.float32),
            "label": np.full((n, size, size), 255, np.uint8),
            "valid_fraction": np.zeros(n, np.float32),
            "ok": np.zeros(n, bool),
            "error": np.full(n, "", dtype=object),
        }
        for i in range(n):
            row = {k: batch[k][i] for k in batch}
            try:
                chip = read_chip(row, self.normalize)
            except ChipReadError as exc:
                out["error"][i] = f"chip {row['chip_id']}: {exc}"
                log.warning("skipping %s", out["error"][i])
                continue
            out["valid_fraction"][i] = chip.valid_fraction
            if chip.valid_fraction < self.min_valid_fraction:
                out["error"][i] = (
                    f"chip {row['chip_id']}: valid fraction {chip.valid_fraction:.2f} "
                    f"< {self.min_valid_fraction} (clouds / nodata)"
                )
                continue
            out["s1"][i], out["s2"][i], out["ok"][i] = chip.s1, chip.s2, True
            if chip.label is not None:
                out["label"][i] = chip.label
        return out


def build_chip_dataset(
    plan_path: str,
    split: str = "train",
    normalize: str = "ssl4eo",
    min_valid_fraction: float = 0.5,
    read_tasks: int = 2,
    read_cpus: float = 0.5,
    rows_per_task: int = 8,
) -> Any:
    """A lazy Ray Dataset of chips for one split of a plan (``split='all'`` keeps every row).

    Args:
        plan_path: GeoParquet chip plan: local path, ``s3://``, ``gs://`` or any URI pyarrow or
            fsspec opens (see :func:`eoforge.plan.io.read_stream_table`).
        split: ``train`` / ``val`` / ``test`` / ``all``.
        normalize: see :mod:`eoforge.data.normalize`.
        min_valid_fraction: chips below this valid-pixel share are skipped and counted.
        read_tasks: how many chip-reading tasks run at once.
        read_cpus: logical CPUs reserved per reading task.
        rows_per_task: chips per ``map_batches`` call.
    """
    import ray.data

    # The plan is metadata only (about 1 kB per chip): the driver reads the rows it needs (from
    # disk or object storage) and hands them to Ray Data as several blocks, so chip reading
    # starts in parallel at once and no worker needs the plan's storage credentials.
    table = read_stream_table(plan_path, split)
    if table.num_rows == 0:
        raise ChipReadError(f"chip plan {plan_path}: no chips in split {split!r}")
    n_blocks = max(1, min(table.num_rows, read_tasks * 4))
    step = -(-table.num_rows // n_blocks)
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
    return ds.map_batches(
        ChipBatchReader,
        fn_constructor_kwargs={"normalize": normalize, "min_valid_fraction": min_valid_fraction},
        batch_size=rows_per_task,
        batch_format="numpy",
        num_cpus=read_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=read_tasks),
    )


def split_ok(batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Keep the readable chips of a batch; returns (good rows, {chip_id: error} of the others)."""
    ok = np.asarray(batch["ok"], bool)
    ids = np.asarray(batch["chip_id"])[~ok]
    errors = {str(c): str(e) for c, e in zip(ids, np.asarray(batch["error"])[~ok], strict=True)}
    good = {k: np.asarray(v)[ok] for k, v in batch.items()}
    return good, errors
