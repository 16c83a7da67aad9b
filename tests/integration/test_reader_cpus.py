"""``read_cpu_set`` on a real local Ray: the readers' option reaches them, the pixels stay, the CPUs come back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from eoforge.data.dataset import build_chip_dataset

from tests.support.demo_plan import demo_plan

ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_plan(tmp_path_factory.mktemp("reader-cpus"), chip_px=64)


def ray_workers() -> dict[int, set[int]]:
    """CPU sets of this process's Ray worker processes (descendants running ``default_worker.py``)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    mine, grew = {os.getpid()}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in mine} - mine
        mine |= more
        grew = bool(more)
    out = {}
    for pid in mine - {os.getpid()}:
        try:
            if b"default_worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out[pid] = set(os.sched_getaffinity(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def chips(plan: Path, **options: object) -> dict[str, np.ndarray]:
    ds = build_chip_dataset(str(plan), split="all", normalize="none", read_tasks=1, read_cpus=1.0, **options)
    return {r["chip_id"]: r["s2"] for r in ds.take_all()}


def test_readers_on_their_own_cpus_give_the_same_chips_and_the_cpus_back(plan: Path, local_ray: None) -> None:
    plain = chips(plan, keep_open=False)
    pinned = chips(plan, keep_open=False, read_cpu_set=ALLOWED[-1:])
    assert sorted(pinned) == sorted(plain) and len(plain) >= 16
    assert all(np.array_equal(pinned[c], plain[c]) for c in plain)
    workers = ray_workers()
    assert workers and all(cpus == set(ALLOWED) for cpus in workers.values()), workers  # none left pinned


def test_a_cpu_the_node_lacks_fails_the_stream_naming_the_option(plan: Path, local_ray: None) -> None:
    # only a reading process can tell (a cluster's nodes differ): the option must reach it through Ray
    with pytest.raises(Exception, match=r"read_cpu_set: CPUs \[4095\] cannot be used on this node"):
        chips(plan, read_cpu_set=[4095])
