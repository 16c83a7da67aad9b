"""The chip cache's one encoding, read back by both its users: pretraining's epochs and fine-tuning's readers.

The files are real Parquet files published through the manifest protocol on local disk (the
Ray Data build is covered by tests/integration/test_materialized.py); here a block is encoded as
the build encodes it and written by pyarrow, so that every reader can be checked pixel for pixel.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eoforge.data.chip_cache import (
    CACHE_VERSION,
    COLUMNS,
    cache_key,
    decode_columns,
    encode_block,
    is_complete,
    open_cache,
    pixel_meta,
)
from eoforge.data.materialized import iter_materialized_batches
from eoforge.data.published import ensure_published
from eoforge.errors import ChipReadError
from eoforge.finetune.labelled import iter_cached_chips, load_cached_chips, read_index

N, H = 10, 8


def _block(start: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(start)
    ids = [f"S2_{i:03d}:0:{i}" for i in range(start, start + n)]
    ok = np.array([i % 4 != 3 for i in range(start, start + n)])
    return {
        "chip_id": np.array(ids, dtype=object),
        "split": np.array(["train" if i % 2 else "val" for i in range(start, start + n)], dtype=object),
        "ok": ok,
        "error": np.array(["" if o else "unreadable" for o in ok], dtype=object),
        "item_labels": np.array([json.dumps([i % 3]) for i in range(start, start + n)], dtype=object),
        "tile_key": np.array([f"tile-{i // 4}" for i in range(start, start + n)], dtype=object),
        "s2": rng.integers(0, 10000, (n, 12, H, H), dtype=np.uint16),
        "s1": rng.normal(-12, 3, (n, 2, H, H)).astype(np.float16),
        "valid": rng.random((n, 2, H, H)) > 0.2,
        "label": rng.integers(0, 10, (n, H, H), dtype=np.uint8),
        "valid_fraction": rng.random(n),  # a stream column the cache does not keep
    }


@pytest.fixture
def cache(tmp_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    blocks = [_block(0, 6), _block(6, N - 6)]

    def build(into: str) -> None:
        Path(into).mkdir(parents=True, exist_ok=True)
        for k, b in enumerate(blocks):
            pq.write_table(encode_block(b), f"{into}/part-{k}.parquet")

    data = SimpleNamespace(normalize="ssl4eo", min_valid_fraction=0.5)
    folder = str(tmp_path / cache_key("ab" * 32, data))
    ensure_published(folder, "chip cache", build, {})
    chips = {k: np.concatenate([b[k] for b in blocks]) for k in COLUMNS}
    return folder, chips


def test_the_key_names_what_changes_the_pixels_and_the_version() -> None:
    data = SimpleNamespace(normalize="ssl4eo", min_valid_fraction=0.25)
    assert cache_key("0123456789abcdef" * 4, data) == f"0123456789abcdef-ssl4eo-mv0.25-{CACHE_VERSION}"


def test_a_block_encodes_and_decodes_to_the_same_arrays() -> None:
    block = _block(0, 5)
    table = encode_block(block)
    assert table.column_names == COLUMNS and pa.types.is_fixed_size_binary(table.schema.field("s2").type)
    got = decode_columns(table, COLUMNS, pixel_meta(table.schema, "mem"))
    for k in COLUMNS:
        assert got[k].dtype == (block[k].dtype if k in ("s2", "s1", "valid", "label", "ok") else object), k
        assert np.array_equal(got[k], block[k]), k
    empty = decode_columns(table.slice(0, 0), ["s2"], pixel_meta(table.schema, "mem"))["s2"]
    assert empty.shape == (0, 12, H, H) and empty.dtype == np.uint16


def test_files_of_another_layout_are_refused_by_name(tmp_path: Path) -> None:
    table = pa.table({"chip_id": ["a"], "s2": [[1, 2]]})
    with pytest.raises(ChipReadError, match=r"/old-cache: files without eoforge.pixels"):
        pixel_meta(table.schema, str(tmp_path / "old-cache"))


def test_both_users_read_the_same_pixels_from_one_cache(cache: tuple[str, dict[str, np.ndarray]]) -> None:
    folder, chips = cache
    assert is_complete(folder) and open_cache(folder).files
    by_id = {str(c): i for i, c in enumerate(chips["chip_id"])}
    # pretraining: one epoch of materialised batches, every row once
    seen = []
    for b in iter_materialized_batches(folder, "all", 4, seed=1):
        for j, c in enumerate(b["chip_id"]):
            i = by_id[str(c)]
            for k in ("s2", "s1", "valid", "label"):
                assert np.array_equal(b[k][j], chips[k][i]), (k, c)
            seen.append(str(c))
    assert sorted(seen) == sorted(by_id)
    # fine-tuning: the index, then chips by id (readable ones only, in the order asked)
    index = read_index(folder)
    assert list(index.chip_id) == list(chips["chip_id"]) and np.array_equal(index.label, chips["label"])
    assert index.skipped() == {str(c): "unreadable" for c in chips["chip_id"][~chips["ok"]]}
    wanted = [str(c) for c in chips["chip_id"][chips["ok"]]][::-1]
    got = load_cached_chips(folder, wanted)
    assert list(got["chip_id"]) == wanted and got["s2"].flags.writeable
    for k in ("s2", "s1", "valid", "label"):
        assert np.array_equal(got[k], chips[k][[by_id[c] for c in wanted]]), k
    assert sum(len(b["chip_id"]) for b in iter_cached_chips(folder, [str(c) for c in chips["chip_id"]])) == len(wanted)
    with pytest.raises(ChipReadError, match="requested chips missing"):
        load_cached_chips(folder, [*wanted, "nowhere:0:0"])


def test_an_unpublished_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ChipReadError, match="not published"):
        read_index(str(tmp_path / "never-built"))
    assert not is_complete(str(tmp_path / "never-built"))
