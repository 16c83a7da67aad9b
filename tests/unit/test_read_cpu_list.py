"""Reading processes on CPUs of their own (``read_cpu_set``): parsing, config, pinning and giving the CPUs back."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from eoforge.config import PlanSource
from eoforge.config.base import parse_cpu_list
from eoforge.data.affinity import parse_cpu_set, reading_on, set_process_cpus
from eoforge.data.dataset import build_chip_dataset, epoch_tasks, read_chip_task
from eoforge.errors import ConfigError
from pydantic import ValidationError

from tests.support.demo_plan import demo_plan as plan_demo_catalog

ALLOWED = sorted(os.sched_getaffinity(0))


def thread_cpus() -> dict[int, set[int]]:
    """The CPU set of every thread of this process."""
    return {int(t): set(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}


def given_back(before: dict[int, set[int]], after: dict[int, set[int]]) -> bool:
    """Every thread holds its CPUs of ``before`` again; one started meanwhile (a reader's or an earlier test's
    client pool: CI at 7525ee6) holds the full set, not the pinned one."""
    return after == {tid: before.get(tid, set(ALLOWED)) for tid in after}


@pytest.mark.parametrize(
    ("spec", "ids"),
    [("3", (3,)), ("2-4,7", (2, 3, 4, 7)), (" 0, 2-3 ", (0, 2, 3)), ([5, 1, 5], (1, 5)), ((0,), (0,))],
)
def test_a_cpu_list_gives_sorted_ids(spec: str | list[int], ids: tuple[int, ...]) -> None:
    assert parse_cpu_list(spec) == ids


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "not a CPU list"),
        ("1-", "not a CPU list"),
        ("a", "not a CPU list"),
        ("-1", "not a CPU list"),
        ("4-2", "runs backwards"),
        ([], "empty CPU set"),
        ([-1], "integers >= 0"),
        ([True], "integers >= 0"),
    ],
)
def test_a_bad_cpu_list_is_refused_naming_the_option(spec: str | list[int], says: str) -> None:
    with pytest.raises(ConfigError, match=f"read_cpu_set: .*{says}"):
        parse_cpu_set(spec)


def test_the_data_section_takes_a_cpu_list_or_ids() -> None:
    assert PlanSource(plan="p.parquet", read_cpu_set="1-2,0").read_cpu_set == [0, 1, 2]
    assert PlanSource(plan="p.parquet", read_cpu_set=[3, 1]).read_cpu_set == [1, 3]
    assert PlanSource(plan="p.parquet").read_cpu_set is None
    with pytest.raises(ValidationError, match=r"(?s)read_cpu_set.*runs backwards"):
        PlanSource(plan="p.parquet", read_cpu_set="3-1")


def test_a_stream_with_a_bad_cpu_list_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    # the plan does not even exist: the option is checked first
    with pytest.raises(ConfigError, match="read_cpu_set"):
        build_chip_dataset(str(tmp_path / "absent.parquet"), split="all", read_cpu_set="2-x")


def test_pinning_moves_every_thread_and_gives_the_cpus_back() -> None:
    target = ALLOWED[-1:]  # on a machine of 2+ CPUs a strict subset, so the move is visible
    started, stop = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (started.set(), stop.wait()))
    worker.start()
    started.wait()
    before = thread_cpus()
    try:
        with reading_on(target):
            inside = thread_cpus()
            late = threading.Thread(target=lambda: inside.update({-1: set(os.sched_getaffinity(0))}))
            late.start()
            late.join()
        after = thread_cpus()
    finally:
        stop.set()
        worker.join()
    assert worker.native_id in inside and all(cpus == set(target) for cpus in inside.values())
    assert given_back(before, after) and worker.native_id in after  # the worker thread included
    assert len(ALLOWED) == 1 or before[threading.main_thread().native_id] != set(target)


def test_a_cpu_the_node_lacks_is_a_config_error_naming_the_option() -> None:
    before = thread_cpus()
    with pytest.raises(ConfigError, match=r"read_cpu_set: CPUs \[4095\] cannot be used on this node"):
        set_process_cpus([4095])
    assert given_back(before, thread_cpus())  # nothing moved


def test_a_read_task_reads_on_its_cpus_and_gives_them_back(tmp_path: Path) -> None:
    plan = plan_demo_catalog(tmp_path, chip_px=64)
    tasks, window_rows = epoch_tasks(str(plan), "all", 16, (0, 1), 7, 0, 0, 2, 8)
    batch = {k: np.array([tasks[0][k]]) for k in ("windows", "take")}  # one read task, as Ray Data hands it over
    kw = {"plan_path": str(plan), "split": "all", "min_valid_fraction": 0.0, "seed": 7, "window_rows": window_rows}
    kw |= {"shuffle_rows": 8, "max_open": 99}
    target = ALLOWED[-1:]
    before = thread_cpus()
    pinned = read_chip_task(batch, **kw, cpu_set=tuple(target))
    first = next(pinned)  # the task is under way: every thread of the process reads on the given CPUs
    during = thread_cpus()
    blocks = [first, *pinned]
    assert all(cpus == set(target) for cpus in during.values())
    assert given_back(before, thread_cpus())  # when the task ends
    plain = list(read_chip_task(batch, **kw))
    got = {c: s2 for b in blocks for c, s2 in zip(b["chip_id"], b["s2"], strict=True)}
    want = {c: s2 for b in plain for c, s2 in zip(b["chip_id"], b["s2"], strict=True)}
    assert sorted(got) == sorted(want) and len(got) > 8  # more than one chunk: the pinning held across yields
    assert all(np.array_equal(got[c], want[c]) for c in want)
