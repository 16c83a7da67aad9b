"""Where a reading task's time goes: the tile-aware reader in one process vs the decode limit.

Runs the reader of the chip stream (:func:`eoforge.data.reader_task.iter_chip_blocks`, the code a Ray
Data read task runs, without Ray) over the data of ``bench/stream.py`` (one clear scene of
``--size`` px, COGs retiled to ``--block`` px, ``--chip`` px chips), pinned to one CPU, with the
sample maps and the items' plausibility verdicts cleared before every pass as in a fresh worker;
and the decode limit of ``bench/stream.py`` on the same rows. Resampling is timed per kind of map
(``aligned``, separable or full ``bilinear``, ``nearest``; whether neighbours outside the image or nodata had to be
checked) by wrapping :func:`eoforge.data.resample.apply_map` in an extra timed pass.

Prints one JSON line: ``reader_ms_per_chip`` (median of ``--repeats`` passes after one warm-up),
``decode_limit_ms_per_chip``, their ratio ``ratio_vs_decode_limit`` (in process: no Ray transfer,
no consumer), and ``resample_ms_per_chip`` by kind.

Usage::

    PYTHONPATH=$PWD/platform:$PWD python bench/reader_profile.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from eoforge.data import epochs, plausibility, reader_task, resample, tiles
from stream import decode_limit_pass, make_data  # bench/stream.py (this folder is sys.path[0])


def reader_pass(plan: str, shuffle_rows: int, mix: int) -> tuple[int, float]:
    """One pass of the reader over the whole plan in this process: (ok chips, seconds)."""
    resample.clear_sample_maps()
    plausibility.clear_verdicts()  # every item checked again, as in a fresh reading process
    t0 = time.perf_counter()
    windows, window_rows = epochs.shardable_windows(plan, "all", 1024, 1)
    sets = epochs.epoch_window_sets(windows, 0, 0, (0, 1), 0, mix)
    n = 0
    for block in reader_task.iter_chip_blocks(
        plan, sets, split="all", window_rows=window_rows, shuffle_rows=shuffle_rows
    ):
        n += int(block["ok"].sum())
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="scene side, px at 10 m")
    ap.add_argument("--chip", type=int, default=64, help="chip side, px at 10 m")
    ap.add_argument("--block", type=int, default=512, help="COG internal tile size (0: the demo's 256)")
    ap.add_argument("--shuffle-rows", type=int, default=512, help="shuffle chunk rows (data.shuffle_rows)")
    ap.add_argument("--mix", type=int, default=4, help="windows read together (data.mix_windows)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        plan, rows = make_data(Path(tmp), 1, args.size, args.chip, args.block, 0)
        print(f"data ready: {len(rows)} chips", file=sys.stderr)
        reader_pass(plan, args.shuffle_rows, args.mix)  # warm-up: files in the page cache
        passes = [reader_pass(plan, args.shuffle_rows, args.mix) for _ in range(args.repeats)]
        n = passes[0][0]
        decode = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            decode_limit_pass(rows)
            decode.append(time.perf_counter() - t0)
        by_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        real = tiles.apply_map

        def timed(
            m: resample.SampleMap, data: np.ndarray, origin: tuple[int, int], nodata: float | None, fill: float
        ) -> np.ndarray:
            t0 = time.perf_counter()
            out = real(m, data, origin, nodata, fill)
            dt = time.perf_counter() - t0
            checked = not (m.inside and bool(resample.valid_mask(data, nodata).all()))
            kind = (
                m.kind + ("_separable" if m.kind != "aligned" and m.separable else "") + ("_checked" if checked else "")
            )
            by_kind[kind][0] += 1
            by_kind[kind][1] += dt
            return out

        tiles.apply_map = timed
        try:
            reader_pass(plan, args.shuffle_rows, args.mix)
        finally:
            tiles.apply_map = real
    reader_ms = 1000 * statistics.median(s for _, s in passes) / n
    decode_ms = 1000 * statistics.median(decode) / len(rows)
    print(
        json.dumps(
            {
                "chips": n,
                "chip_px": args.chip,
                "block_px": args.block,
                "reader_ms_per_chip": round(reader_ms, 3),
                "decode_limit_ms_per_chip": round(decode_ms, 3),
                "ratio_vs_decode_limit": round(decode_ms / reader_ms, 3),
                "reader_passes_s": [round(s, 3) for _, s in passes],
                "resample_ms_per_chip": {k: round(1000 * s / n, 3) for k, (_, s) in sorted(by_kind.items())},
                "resample_calls": {k: c for k, (c, _) in sorted(by_kind.items())},
            }
        )
    )


if __name__ == "__main__":
    main()
