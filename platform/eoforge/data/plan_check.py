"""A job's plan checked before training: stop when every item's values are implausible for their units.

The reader skips and counts the chips of an implausible item (:mod:`eoforge.data.plausibility`), so a
plan with some bad items trains on the others. A plan whose items are *all* bad (the whole catalog
read through the wrong provider profile) would stream nothing but skipped chips and train on nothing
(or end with an empty-split error that hides the cause). :func:`check_plan_items` reads a few chips of
each of up to :data:`CHECK_PAIRS` scene pairs, spread over the plan, with the real reader on the
driver, and raises the first item's reason when none of them is plausible.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from eoforge.errors import ChipReadError, ImplausibleDataError, ImplausibleItemError
from eoforge.progress import say

#: Scene pairs (S1 item, S2 item) of a plan that are read, at most, spread evenly over its pairs.
CHECK_PAIRS = 16
#: Chips read per checked pair, at most (the first of the pair's rows in plan order).
CHECK_CHIPS = 8


def _checked_rows(table: pa.Table) -> tuple[dict[tuple[str, str], list[int]], int]:
    """((S1 item, S2 item) -> row indices to read, for up to :data:`CHECK_PAIRS` pairs spread over the plan; pairs)."""
    pairs: dict[tuple[str, str], list[int]] = {}
    s1_items, s2_items = table.column("s1_item").to_pylist(), table.column("s2_item").to_pylist()
    for i, pair in enumerate(zip(s1_items, s2_items, strict=True)):
        rows = pairs.setdefault((str(pair[0]), str(pair[1])), [])
        if len(rows) < CHECK_CHIPS:
            rows.append(i)
    keys = sorted(pairs)
    step = max(1, len(keys) / CHECK_PAIRS)
    chosen = {keys[int(k * step)]: pairs[keys[int(k * step)]] for k in range(min(CHECK_PAIRS, len(keys)))}
    return chosen, len(keys)


def check_plan_items(plan: str | Path, split: str = "all") -> None:
    """Read a few chips of each of up to :data:`CHECK_PAIRS` scene pairs; stop if no checked pair is plausible.

    A pair is plausible when one of its chips reads; implausible when its chips fail the value
    check; a pair whose chips fail otherwise (unreadable file) counts as neither.

    Raises:
        ImplausibleDataError: at least one checked pair is implausible and none is plausible; the
            message gives the first reason (the item, its provider profile, what was seen, the likely
            cause) and how many pairs were checked.
        CatalogError / ServiceError: the plan cannot be read.
    """
    from eoforge.data.files import DatasetCache
    from eoforge.data.tiles import read_rows
    from eoforge.plan.io import read_stream_table

    table = read_stream_table(plan, split)
    if table.num_rows == 0:
        return
    checked, n_pairs = _checked_rows(table)
    plausible, implausible = 0, []
    cache = DatasetCache()
    try:
        for idx in checked.values():
            results = read_rows(table.take(idx).to_pylist(), cache)
            if any(not isinstance(r, ChipReadError) for r in results):
                plausible += 1
                break  # one plausible pair is enough: the reader skips the others' chips and counts them
            reasons = [str(r) for r in results if isinstance(r, ImplausibleItemError)]
            if reasons:
                implausible.append(reasons[0])
    finally:
        cache.close()
    if implausible and not plausible:
        raise ImplausibleDataError(
            f"chip plan {plan}: every scene pair checked ({len(implausible)} of {n_pairs}, split {split!r}) has "
            "values no sensor measures in their declared units, so there is nothing to train on. "
            f"First: {implausible[0]}. Fix the provider profile or units (docs/providers.md) and re-plan."
        )
    if implausible:
        say(f"chip plan {plan}: {len(implausible)} checked scene pairs have implausible values (skipped and counted)")
