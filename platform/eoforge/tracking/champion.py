"""The champion alias moved by compare-and-set: of two sweeps racing for it, the better model wins.

See :func:`decide_champion` and docs/reliability.md for the protocol and its residual window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChampionDecision:
    """Whether a new version took the champion alias, and why.

    Attributes:
        promoted: the alias points at the new version (as read back after setting it).
        reason: one line for logs and the run's ``eoforge.champion_reason`` tag.
        previous_version / previous_value: the champion when the decision started (None: none).
    """

    promoted: bool
    reason: str
    previous_version: str | None
    previous_value: float | None


METRIC_NAME_TAG, METRIC_VALUE_TAG = "eoforge.val_metric", "eoforge.val_metric_value"
#: Tag of a version whose champion decision started (value: when, Unix seconds): the race's entrants.
DECIDED_TAG = "eoforge.champion_decided_at"
#: Decisions started less than this long ago (seconds) count as concurrent.
RACE_WINDOW_S = 900.0
#: Set-and-read-back rounds at most, before giving up with the alias as read last.
CHAMPION_ROUNDS = 5


@dataclass(frozen=True)
class _Entry:
    version: str
    metric: str | None
    value: float


def _entry(mv: Any) -> _Entry:
    tags = mv.tags or {}
    return _Entry(str(mv.version), tags.get(METRIC_NAME_TAG), float(tags.get(METRIC_VALUE_TAG, "nan")))


def _holder(client: Any, name: str, alias: str) -> _Entry | None:
    from mlflow.exceptions import MlflowException

    try:
        return _entry(client.get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def _contenders(client: Any, name: str, version: str, metric: str) -> list[_Entry]:
    """Other versions of ``name`` whose champion decision on ``metric`` started within :data:`RACE_WINDOW_S`."""
    import time

    now = time.time()
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        pending = (mv.tags or {}).get(DECIDED_TAG)
        entry = _entry(mv)
        if pending is None or entry.version == str(version) or entry.metric != metric:
            continue
        try:
            fresh = now - float(pending) < RACE_WINDOW_S
        except ValueError:
            fresh = False
        if fresh:
            out.append(entry)
    return out


def decide_champion(
    tracking_uri: str, name: str, version: str, metric: str, value: float, alias: str = "champion"
) -> ChampionDecision:
    """Move ``alias`` to ``version`` only if its validation ``metric`` beats the current champion's.

    The rule: no current champion -> promote; the champion was selected on another metric ->
    keep it (not comparable); otherwise promote only when ``value`` is strictly greater.

    Concurrent decisions (two sweeps finishing together) are settled by a compare-and-set done
    by hand, since MLflow has no conditional alias update:

    1. the version is tagged with its metric, its value and :data:`DECIDED_TAG` (now) before
       anything is read, so every decision that reads later sees it;
    2. the alias holder and the versions of the other decisions of the last :data:`RACE_WINDOW_S`
       on the same metric (the race's entrants) are read; if the holder, or an entrant that
       beats this version, is at least as good, the alias is left alone and the reason names it;
    3. otherwise the alias is set, then READ BACK: if another writer's version now holds it and
       is at least as good (or not comparable), this decision lost and says so; if it is worse,
       it overwrote this one and the alias is set again; if this version holds it but an entrant
       is better (this write landed after that one's), the alias is restored to that entrant.
       Up to :data:`CHAMPION_ROUNDS` rounds.

    Of two racing decisions the better version ends up holding the alias, whatever the order of
    their reads and writes (each one's tag precedes its reads, so at least the later reader sees
    the other; the entrants stay visible for :data:`RACE_WINDOW_S` after they finish, so a late
    write is caught by its own read-back). Residual window, since MLflow has no conditional alias
    update: with three or more decisions within the same few requests, a restore decided on a read
    that missed a still better entrant can land after that entrant's last read-back, leaving the
    second best in place until the next decision. And an entrant of the last :data:`RACE_WINDOW_S`
    that is better than this version keeps it from taking the alias even if someone demoted
    that entrant by hand meanwhile.
    """
    import time

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    version = str(version)
    client.set_model_version_tag(name, version, METRIC_NAME_TAG, metric)
    client.set_model_version_tag(name, version, METRIC_VALUE_TAG, repr(float(value)))
    client.set_model_version_tag(name, version, DECIDED_TAG, repr(time.time()))
    return _settle(client, name, version, metric, float(value), alias)


def _settle(client: Any, name: str, version: str, metric: str, value: float, alias: str) -> ChampionDecision:
    """Steps 2 and 3 of :func:`decide_champion` (the version is tagged)."""
    first = _holder(client, name, alias)
    prev_version = first.version if first and first.version != version else None
    prev_value = first.value if first and first.version != version else None
    ours = f"version {version} ({metric} {value:.4f})"
    for _ in range(CHAMPION_ROUNDS):
        holder = _holder(client, name, alias)
        rivals = _contenders(client, name, version, metric)
        if holder is not None and holder.version != version:
            if holder.metric != metric:
                why = f"it was selected on {holder.metric!r}, not comparable with {metric!r}"
                return ChampionDecision(False, f"kept version {holder.version}: {why}", holder.version, holder.value)
            if holder.value >= value:
                lost = " (set by a concurrent decision)" if holder.version != prev_version else ""
                why = f"{metric} {holder.value:.4f} >= {value:.4f} of version {version}{lost}"
                return ChampionDecision(False, f"kept version {holder.version}: {why}", holder.version, holder.value)
        better = max((r for r in rivals if r.value > value), key=lambda r: r.value, default=None)
        if better is not None:  # a concurrent decision has a better version: it takes the alias, not us
            if holder is not None and holder.version == version:
                client.set_registered_model_alias(name, alias, better.version)  # restore it
            why = f"a concurrent decision for version {better.version} ({metric} {better.value:.4f}) is better"
            if holder is not None and holder.version == version:
                why += f"; {alias} handed back to it"
            return ChampionDecision(False, f"{ours} did not take {alias}: {why}", prev_version, prev_value)
        if holder is not None and holder.version == version:  # read back: ours, and no entrant is better
            if prev_version is None:
                reason = f"no current {alias}: {ours} takes it"
            else:
                reason = f"version {version} {metric} {value:.4f} > {prev_value:.4f} of version {prev_version}"
            return ChampionDecision(True, reason, prev_version, prev_value)
        client.set_registered_model_alias(name, alias, version)  # then read back, next round
    holder = _holder(client, name, alias)
    won = holder is not None and holder.version == version
    last = holder.version if holder else None
    why = f"{alias} still moving after {CHAMPION_ROUNDS} rounds; it points at version {last}"
    return ChampionDecision(won, why, prev_version, prev_value)
