"""Where ``bench/stream.py``'s processes run: pinning, the own-cores layout, CPU busy shares.

Imported by the stream benchmarks (``bench/`` is ``sys.path[0]`` when they run as scripts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from eoforge.data.affinity import set_process_cpus

#: The CPUs this process may use when it starts (before any pinning).
ALLOWED_CPUS = sorted(os.sched_getaffinity(0))


def pin(cpus: int) -> list[int]:
    """Pin every thread of this process (and so every child started later) to the first ``cpus`` CPUs."""
    if cpus > len(ALLOWED_CPUS):
        raise SystemExit(f"--cores {cpus}: only {len(ALLOWED_CPUS)} CPUs available to this process")
    return pin_to(ALLOWED_CPUS[:cpus])


def pin_to(cpus: list[int]) -> list[int]:
    """Pin every thread of this process (and every child started later) to ``cpus``; returns them sorted."""
    set_process_cpus(cpus, "bench pinning")
    return sorted(cpus)


def own_cores_layout(readers: int) -> tuple[list[int], list[int]]:
    """(consumer + Ray CPUs, reader CPUs) of ``--own-cores``: readers on the last ``readers`` CPUs, the rest apart."""
    if readers >= len(ALLOWED_CPUS):
        raise SystemExit(
            f"--own-cores {readers}: needs {readers} reader CPUs + 1 for the consumer and Ray, "
            f"this process may use {len(ALLOWED_CPUS)}"
        )
    return ALLOWED_CPUS[:-readers], ALLOWED_CPUS[-readers:]


def cpu_ticks(cpus: list[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of ``cpus`` since boot, summed (``/proc/stat``; idle and iowait are not busy)."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def with_busy(fn: Callable[[], dict], groups: dict[str, list[int]]) -> Callable[[], dict]:
    """``fn`` that also returns the busy share of each group of CPUs during the call (``busy_<group>``)."""

    def run() -> dict:
        before = {g: cpu_ticks(c) for g, c in groups.items()}
        res = fn()
        for g, c in groups.items():
            b1, t1 = cpu_ticks(c)
            res[f"busy_{g}"] = (b1 - before[g][0]) / max(1, t1 - before[g][1])
        return res

    return run
