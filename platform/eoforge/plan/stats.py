"""Counts of what each planning stage kept (``PlanStats``), and which items and chips were skipped and why."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pystac

from eoforge.redact import redact

log = logging.getLogger(__name__)


@dataclass
class PlanStats:
    """What each planning stage kept, and which items were skipped and why."""

    stages: dict[str, int] = field(default_factory=dict)
    pairing: dict[str, Any] = field(default_factory=dict)
    skipped_items: list[dict[str, str]] = field(default_factory=list)
    #: Chips left out of the plan after the S1 test, per reason (e.g. no split for their item's property).
    skipped_chips: dict[str, int] = field(default_factory=dict)

    def skip_chips(self, reason: str, n: int) -> None:
        """Record ``n`` chips left out for ``reason``."""
        if n:
            self.skipped_chips[reason] = self.skipped_chips.get(reason, 0) + n

    def skip(self, item: pystac.Item, reason: str) -> None:
        """Record a skipped item (the reason redacted: it may quote an href)."""
        reason = redact(reason)
        self.skipped_items.append({"item": item.id, "collection": item.collection_id or "", "reason": reason})
        log.warning("skipping item %s (%s): %s", item.id, item.collection_id, reason)

    def skipped_by_reason(self) -> dict[str, int]:
        """Counts of skipped items per reason kind (text before the first colon)."""
        return dict(Counter(s["reason"].split(":")[0] for s in self.skipped_items))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (plan metadata, MLflow)."""
        return {
            "stages": self.stages,
            "pairing": self.pairing,
            "skipped_items": self.skipped_items,
            "skipped_by_reason": self.skipped_by_reason(),
            "skipped_chips": dict(sorted(self.skipped_chips.items())),
        }

    def summary(self) -> str:
        """One line of stage counts."""
        return ", ".join(f"{k}={v}" for k, v in self.stages.items())
