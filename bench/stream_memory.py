"""Bounded memory of eoforge's stream: peak RSS of the driver and of the Ray workers, N vs 10N chips.

Builds the demo data of ``bench/stream.py`` (one clear scene of ``--size`` px, COGs retiled to
``--block`` px), then two plans on the same COGs: the first ``--rows`` N plan rows, and 10N rows
(``--factor``) made by cycling the plan's rows with distinct chip ids (``<chip_id>#<k>``). Each plan
is streamed in a fresh child process (a fresh local Ray: ``ray.init(num_cpus=--cores)``, every
process pinned to ``--cores`` CPUs) through the public API only::

    ds = build_chip_dataset(plan, split="all", normalize="none", read_tasks=..., read_cpus=...)
    for batch in ds.iter_batches(batch_size=--batch, batch_format="numpy"): count ok chips, drop

A thread samples, every ``--interval`` s, the memory of the driver and of every Ray worker process
(psutil finds the driver's descendants; workers are those whose command line starts with ``ray::``;
Ray's system processes, raylet and GCS, are reported apart), from ``/proc/<pid>/status``: RSS and
its parts ``anon`` (RssAnon: the process's own heap) and ``shmem`` (RssShmem: the pages of Ray's
shared object store it has touched, which RSS counts too). Peaks: the driver's, the largest single
worker's, and the largest sum over workers at one sample; ``trace``: the latest sample at every
10 % of the plan (does memory climb all along, or level off?), summed up for the 10N run as
``large_run_second_half_vs_first`` (peak of the second half / peak of the first half).

The same thread records ``object_store_used_peak_mb``: the most bytes of objects in the node's object
store (Ray's resource view, refreshed about every 0.1 s, so a short burst can be missed). A process's
``shmem`` is the set of store pages it has touched, which stays counted after the objects are freed.
With Ray's defaults a raylet frees dead objects in batches of 100 (or after 1 s), so the store keeps
about a hundred dead blocks and its allocator places new ones over more and more of its memory: a
consumer's ``shmem`` climbs with the plan's length up to the store's size (``bench/store_pages.py``).
The child starts Ray with eoforge's node settings (:mod:`eoforge.ray_node`: freed one by one), as
``eoforge up``, the embedded default and the k8s manifests do; ``--ray-free-defaults`` runs Ray's.

JSON last line: both runs, ``driver_rss_ratio`` / ``worker_rss_ratio`` (10N peak / N peak of the
driver / of the largest worker; goal <= 1.2) and the same for private memory only
(``driver_anon_ratio`` / ``worker_anon_ratio``); ``goals`` says which are met.

N (``--rows``, default 10000: 10 read tasks of 1024 rows, 2 at a time) must be long enough for the small run to
reach the stream's steady state (both readers busy, their caches filled, the store's working set
touched; measured: the driver's ratio 1.15 and 1.23 in two runs at N = 5000, 1.18 at 10000);
with N = 500 the small plan is one read task of one chunk, and the ratios
measure that start-up, not growth with the plan's length.

Usage::

    PYTHONPATH=$PWD/platform:$PWD python bench/stream_memory.py                # N=10000 -> 100000, 2 cores (~2 min)
    PYTHONPATH=$PWD/platform:$PWD python bench/stream_memory.py --ray-free-defaults   # Ray's object freeing
    PYTHONPATH=$PWD/platform:$PWD python bench/stream_memory.py --block-mb 128 --object-store-mb 0  # Ray Data: defaults
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from eoforge.plan.io import write_plan
from eoforge.ray_node import RAY_NODE_ENV, with_node_env
from stream import make_data, pin  # bench/stream.py (this folder is sys.path[0] when run as a script)

MB = 1024 * 1024


def memory(pid: int) -> dict[str, int]:
    """RSS of a process and its parts, bytes: ``rss``, ``anon`` (private heap), ``shmem`` (shared memory:
    the Ray object store pages it touched), from ``/proc/<pid>/status``."""
    parts = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in parts:
                parts[key] = int(value.split()[0]) * 1024
    return {"rss": sum(parts.values()), "anon": parts["RssAnon"], "shmem": parts["RssShmem"]}


def object_store_used() -> int:
    """Bytes of objects in the local Ray's object store now (its resource view: refreshed about every 0.1 s)."""
    import ray

    total = ray.cluster_resources().get("object_store_memory", 0)
    return int(total - ray.available_resources().get("object_store_memory", total))


def _max(peak: dict[str, int], now: dict[str, int]) -> None:
    for k, v in now.items():
        peak[k] = max(peak.get(k, 0), v)


class RssSampler(threading.Thread):
    """Samples the memory (see :func:`memory`) of this process and of its Ray descendants until :meth:`stop`."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        import psutil  # ray puts its vendored psutil on sys.path

        self.psutil = psutil
        self.me = psutil.Process()
        self.interval = interval
        self.done = threading.Event()
        self.driver: dict[str, int] = {}
        self.workers_sum: dict[str, int] = {}
        self.system_sum: dict[str, int] = {}
        self.worker_peaks: dict[int, dict[str, int]] = {}
        self.samples = 0
        self.driver_now: dict[str, int] = {}
        self.workers_now: dict[str, int] = {}
        self.store_used = 0  # peak bytes in Ray's object store (all objects)

    def sample(self) -> None:
        ps = self.psutil
        self.driver_now = memory(self.me.pid)
        _max(self.driver, self.driver_now)
        workers = {"rss": 0, "anon": 0, "shmem": 0}
        system = dict(workers)
        for child in self.me.children(recursive=True):
            try:
                cmd, mem = child.cmdline(), memory(child.pid)
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess, FileNotFoundError, ProcessLookupError):
                continue
            into = workers if cmd and cmd[0].startswith("ray::") else system
            for k, v in mem.items():
                into[k] += v
            if into is workers:
                _max(self.worker_peaks.setdefault(child.pid, {}), mem)
        _max(self.workers_sum, workers)
        _max(self.system_sum, system)
        self.workers_now = workers
        self.store_used = max(self.store_used, object_store_used())
        self.samples += 1

    def worker_peak(self, key: str) -> int:
        """The largest single Ray worker's peak of ``key`` (rss, anon, shmem)."""
        return max((p[key] for p in self.worker_peaks.values()), default=0)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.sample()


def child(args: argparse.Namespace) -> None:
    """Stream one plan on a fresh local Ray and print its memory peaks as JSON."""
    import ray
    from eoforge.data.dataset import build_chip_dataset

    pin(args.cores)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance (no ~/.ray/auth_token made)
    if not args.ray_free_defaults:
        with_node_env(os.environ)  # eoforge's Ray node settings, as `eoforge up` and init_ray start Ray
    store = int(args.store_mb * 2**20) if args.store_mb else None  # 0: Ray's default (30 % of RAM)
    ray.init(
        address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False, object_store_memory=store
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        sampler = RssSampler(args.interval)
        sampler.sample()
        driver_start = dict(sampler.driver)
        sampler.start()
        kw: dict[str, Any] = {"read_tasks": args.read_tasks or args.cores, "read_cpus": args.read_cpus}
        if args.shuffle_rows:
            kw["shuffle_rows"] = args.shuffle_rows
        if args.block_mb:
            kw["block_mb"] = args.block_mb
        if args.object_store_mb is not None:
            kw["object_store_mb"] = args.object_store_mb or None
        t0 = time.perf_counter()
        ds = build_chip_dataset(args.child, split="all", normalize="none", **kw)
        n_ok = n_rows = 0
        trace, total, step = [], pq.ParquetFile(args.child).metadata.num_rows, 0.1
        for batch in ds.iter_batches(batch_size=args.batch, batch_format="numpy"):
            n_ok += int(batch["ok"].sum())
            n_rows += len(batch["ok"])
            del batch
            if n_rows >= step * total and sampler.driver_now:  # the latest sample, every 10 % of the plan
                step += 0.1
                d, w = sampler.driver_now, sampler.workers_now
                trace.append([n_rows, _mb(d["rss"]), _mb(d["anon"]), _mb(w["rss"]), _mb(w["anon"])])
        seconds = time.perf_counter() - t0
        sampler.stop()
    finally:
        ray.shutdown()
    print(
        json.dumps(
            {
                "rows": n_rows,
                "chips_ok": n_ok,
                "seconds": round(seconds, 2),
                "driver_rss_start_mb": _mb(driver_start["rss"]),
                "driver_rss_peak_mb": _mb(sampler.driver["rss"]),
                "driver_anon_start_mb": _mb(driver_start["anon"]),
                "driver_anon_peak_mb": _mb(sampler.driver["anon"]),
                "driver_shmem_peak_mb": _mb(sampler.driver["shmem"]),
                "worker_rss_peak_mb": _mb(sampler.worker_peak("rss")),
                "worker_anon_peak_mb": _mb(sampler.worker_peak("anon")),
                "worker_shmem_peak_mb": _mb(sampler.worker_peak("shmem")),
                "workers_rss_sum_peak_mb": _mb(sampler.workers_sum["rss"]),
                "workers_anon_sum_peak_mb": _mb(sampler.workers_sum["anon"]),
                "ray_system_rss_sum_peak_mb": _mb(sampler.system_sum["rss"]),
                "object_store_used_peak_mb": _mb(sampler.store_used),
                "worker_processes": len(sampler.worker_peaks),
                "trace_columns": [
                    "rows",
                    "driver_rss_mb",
                    "driver_anon_mb",
                    "workers_rss_sum_mb",
                    "workers_anon_sum_mb",
                ],
                "trace": trace,
                "samples": sampler.samples,
                "build_chip_dataset": kw,
            }
        )
    )


def _mb(n: int) -> float:
    return round(n / MB, 1)


def cycled(rows: list[dict], n: int) -> list[dict]:
    """``n`` plan rows: ``rows`` in order, repeated with chip ids ``<chip_id>#<k>`` after the first round."""
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        k = i // len(rows)
        if k:
            row["chip_id"] = f"{row['chip_id']}#{k}"
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000, help="N: chips of the small plan")
    ap.add_argument("--factor", type=int, default=10, help="the large plan has factor x N chips")
    ap.add_argument("--size", type=int, default=1024, help="scene side, px at 10 m")
    ap.add_argument("--chip", type=int, default=64, help="chip side, px at 10 m")
    ap.add_argument("--block", type=int, default=512, help="COG internal tile size (0: the demo's 256)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--interval", type=float, default=0.1, help="RSS sampling period, s")
    ap.add_argument("--read-tasks", type=int, default=None, help="build_chip_dataset read_tasks (default --cores)")
    ap.add_argument("--read-cpus", type=float, default=1.0, help="build_chip_dataset read_cpus")
    ap.add_argument("--shuffle-rows", type=int, default=None, help="build_chip_dataset shuffle_rows")
    ap.add_argument(
        "--block-mb", type=float, default=None, help="build_chip_dataset block_mb (128: Ray Data's default)"
    )
    ap.add_argument(
        "--object-store-mb", type=float, default=None, help="build_chip_dataset object_store_mb (0: Ray Data's default)"
    )
    ap.add_argument(
        "--store-mb",
        type=float,
        default=None,
        help="the local Ray node's object store, MiB (ray.init object_store_memory; default or 0: Ray's, 30 %% of RAM)",
    )
    ap.add_argument(
        "--ray-free-defaults",
        action="store_true",
        help="start Ray without eoforge.ray_node's settings (dead objects freed in batches of 100)",
    )
    ap.add_argument("--workdir", default=None, help="keep data here (default: a temporary folder)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: stream this plan
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        _, rows = make_data(Path(tmp), 1, args.size, args.chip, args.block, 0)
        runs = {}
        for name, n in (("n", args.rows), ("n_large", args.rows * args.factor)):
            plan = Path(tmp) / f"plan_{n}.parquet"
            write_plan(cycled(rows, n), plan)
            cmd = [sys.executable, __file__, "--child", str(plan)]
            for flag in (
                "cores",
                "batch",
                "interval",
                "read_tasks",
                "read_cpus",
                "shuffle_rows",
                "block_mb",
                "object_store_mb",
                "store_mb",
            ):
                value = getattr(args, flag)
                if value is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(value)]
            if args.ray_free_defaults:
                cmd.append("--ray-free-defaults")
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            if proc.returncode:
                raise SystemExit(f"stream_memory child for {n} chips failed (exit {proc.returncode})")
            runs[name] = {"plan_rows": n, **json.loads(proc.stdout.strip().splitlines()[-1])}
            print(f"{n} chips: {runs[name]}", file=sys.stderr, flush=True)
    small, large = runs["n"], runs["n_large"]
    out = {
        "rows": args.rows,
        "factor": args.factor,
        "cores": args.cores,
        "chip_px": args.chip,
        "block_px": args.block or 256,
        "node_object_store_mb": args.store_mb or "ray default (30 % of RAM)",
        "ray_node_env": "ray defaults" if args.ray_free_defaults else RAY_NODE_ENV,
        "runs": runs,
        "driver_rss_ratio": round(large["driver_rss_peak_mb"] / small["driver_rss_peak_mb"], 3),
        "worker_rss_ratio": round(large["worker_rss_peak_mb"] / small["worker_rss_peak_mb"], 3),
        "workers_sum_rss_ratio": round(large["workers_rss_sum_peak_mb"] / small["workers_rss_sum_peak_mb"], 3),
        # private memory only (RssAnon): growth there is the process's own heap, not touched shared pages
        "driver_anon_ratio": round(large["driver_anon_peak_mb"] / small["driver_anon_peak_mb"], 3),
        "worker_anon_ratio": round(large["worker_anon_peak_mb"] / small["worker_anon_peak_mb"], 3),
    }
    # within the 10N run: peak of the trace's second half / its first half, per column (1.0 = levelled off)
    trace = large["trace"]
    half = len(trace) // 2
    if half:
        out["large_run_second_half_vs_first"] = {
            col: round(max(t[i] for t in trace[half:]) / max(t[i] for t in trace[:half]), 3)
            for i, col in enumerate(large["trace_columns"])
            if i
        }
    out["goals"] = {
        "driver_rss_ratio<=1.2": out["driver_rss_ratio"] <= 1.2,
        "worker_rss_ratio<=1.2": out["worker_rss_ratio"] <= 1.2,
        "driver_anon_ratio<=1.2": out["driver_anon_ratio"] <= 1.2,
        "worker_anon_ratio<=1.2": out["worker_anon_ratio"] <= 1.2,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
