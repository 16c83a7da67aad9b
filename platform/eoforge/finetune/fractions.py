"""Label-fraction subsets: stratified, seeded, nested, and identical across methods.

Each train chip has a stratum (its majority class, or for multi-label its rarest present
class; see :meth:`eoforge.finetune.tasks.Task.stratum`). Within a stratum, chips are ordered
by ``sha256(seed, chip_id)``: an order that depends only on the seed and the chip's own id.
The subset for fraction ``f`` takes the first ``ceil(f * n_s)`` chips of every stratum ``s``,
so that

- every class with a chip in the train split is present at every fraction (ceil gives >= 1);
- subsets are nested (the 1 % subset is a prefix of the 10 % one, per stratum);
- two methods, or two runs, with the same seed and plan draw exactly the same chips.

Because of the per-stratum ceil, the realised fraction is slightly above ``f`` for small
sets; the chosen chip ids and the realised size are logged with every run.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence


def _rank_key(seed: int, chip_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{chip_id}".encode()).digest()


def label_subset(chip_ids: Sequence[str], strata: Sequence[int], fraction: float, seed: int) -> list[str]:
    """The chip ids of one label fraction (sorted).

    Args:
        chip_ids: train chip ids, unique.
        strata: stratum of each chip (same length); -1 marks a chip without a usable label.
        fraction: share in (0, 1]; 1.0 returns every chip with a stratum >= 0.
        seed: subset seed.

    Raises:
        ValueError: fraction outside (0, 1], or lengths differ.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if len(chip_ids) != len(strata):
        raise ValueError(f"{len(chip_ids)} chip ids but {len(strata)} strata")
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for chip_id, stratum in zip(chip_ids, strata, strict=True):
        if stratum >= 0:
            by_stratum[stratum].append(chip_id)
    chosen: list[str] = []
    for stratum in sorted(by_stratum):
        ordered = sorted(by_stratum[stratum], key=lambda c: _rank_key(seed, c))
        chosen.extend(ordered[: math.ceil(fraction * len(ordered))])
    return sorted(chosen)


def label_subsets(
    chip_ids: Sequence[str], strata: Sequence[int], fractions: Sequence[float], seed: int
) -> dict[float, list[str]]:
    """:func:`label_subset` for several fractions at once (nested by construction)."""
    return {f: label_subset(chip_ids, strata, f, seed) for f in fractions}
