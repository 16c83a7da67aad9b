"""Reading processes on CPUs of their own: the stream's ``read_cpu_set`` (Linux CPU affinity).

On a training node the chip stream's reading tasks share the CPUs with the trainer's process(es)
and Ray's own (raylet, GCS, the driver). Given a CPU set (``data.read_cpu_set`` in a job config,
``read_cpu_set`` of :func:`eoforge.data.dataset.build_chip_dataset`), each reading task moves its
whole process (every thread: the reader's and Ray's core-worker threads that put its blocks into
the object store) onto those CPUs while it reads, and puts it back where it was when the task
ends, so a pooled worker that later runs something else is not left pinned.

It only moves the readers. Keeping the other processes off the readers' CPUs is the node's job,
for example by starting Ray under ``taskset -c 0-1`` (every Ray process, trainer workers included,
inherits that set, and the readers move themselves out of it): docs/benchmarks.md, "Readers on
cores of their own".
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from eoforge.config.base import parse_cpu_list
from eoforge.errors import ConfigError

#: Where a CPU set comes from, for error messages.
OPTION = "read_cpu_set"


def parse_cpu_set(spec: str | Sequence[int], where: str = OPTION) -> tuple[int, ...]:
    """CPU ids of a Linux CPU list (``"2-15"``) or ids, sorted (:func:`eoforge.config.base.parse_cpu_list`).

    Raises:
        ConfigError: not a CPU list, an empty set or a negative id, naming ``where``.
    """
    try:
        return parse_cpu_list(spec)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def process_cpus() -> set[int]:
    """The CPUs this process's calling thread may run on (``sched_getaffinity``)."""
    return set(os.sched_getaffinity(0))


def set_process_cpus(cpus: Sequence[int] | set[int], where: str = OPTION) -> None:
    """Pin every thread of this process to ``cpus`` (threads started later inherit it from their parent).

    Raises:
        ConfigError: the platform has no CPU affinity (not Linux), or none of ``cpus`` is a CPU
            this process may use (the node's cpuset or its CPU count), naming ``where``.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError(f"{where}: pinning reading processes to CPUs needs Linux (sched_setaffinity)")
    chosen = set(cpus)
    try:
        os.sched_setaffinity(0, chosen)  # this thread first: an impossible set fails here, before any other moved
    except OSError as exc:
        raise ConfigError(
            f"{where}: CPUs {sorted(chosen)} cannot be used on this node ({os.cpu_count()} CPUs, ids 0..; {exc})"
        ) from exc
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), chosen)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile


@contextmanager
def reading_on(cpus: Sequence[int] | None) -> Iterator[None]:
    """Run the body with this whole process on ``cpus``, then put it back on the CPUs it had (None: no change)."""
    if cpus is None:
        yield
        return
    before = process_cpus()
    set_process_cpus(cpus)
    try:
        yield
    finally:
        set_process_cpus(before)
