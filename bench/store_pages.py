"""Object-store pages a consumer touches: Ray's allocator vs the store's size (no eoforge code).

A task returns ``--objects`` arrays of about ``--mb`` MB (15-16 MB, varying a little, like a
stream's blocks); the driver keeps ``--alive`` of them in flight, reads each one and drops it. Every
``--every`` objects it records its own ``RssShmem`` (``/proc/self/status``): the store pages it has
touched, which RSS counts. Run once on Ray's default store (30 % of RAM) and once on a store of
``--store-mb``, each in a fresh local Ray.

Prints one JSON line: ``{"default_store": [[objects read, shmem MB], ...], "store_<N>mb": [...]}``.
With the default store the touched pages keep growing long after the live set (``alive x mb``)
is reached: the allocator spreads objects over the store; with a small store they level off at
about its size. This is why ``bench/stream_memory.py`` has ``--store-mb`` and the stack sizes it.

Usage::

    python bench/store_pages.py                 # 400 objects of ~16 MB, 6 alive; 300 MB store
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def shmem_mb() -> int:
    """This process's RssShmem, MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem"):
                return int(line.split()[1]) // 1024
    return 0


def child(args: argparse.Namespace) -> None:
    """One run on a fresh local Ray: the trace as a JSON line."""
    import numpy as np
    import ray

    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=int(args.store_mb * 2**20) if args.store_mb else None,
    )

    @ray.remote
    def make(i: int, mb: int) -> np.ndarray:
        return np.full(mb * 2**20 // 2, i, np.uint16)

    trace, refs, read = [], [], 0
    try:
        for i in range(args.objects):
            refs.append(make.remote(i, args.mb - i % 2))
            if len(refs) > args.alive:
                a = ray.get(refs.pop(0))
                int(a[::4096].sum())  # read it (every page of the object is mapped, one in 4096 elements read)
                del a
                read += 1
                if read % args.every == 0:
                    trace.append([read, shmem_mb()])
    finally:
        ray.shutdown()
    print(json.dumps(trace))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=400)
    ap.add_argument("--mb", type=int, default=16)
    ap.add_argument("--alive", type=int, default=6)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--store-mb", type=float, default=300.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    out = {}
    for name, store in (("default_store", 0), (f"store_{int(args.store_mb)}mb", args.store_mb)):
        cmd = [sys.executable, __file__, "--child", "--store-mb", str(store)]
        cmd += ["--objects", str(args.objects), "--mb", str(args.mb), "--alive", str(args.alive)]
        cmd += ["--every", str(args.every)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
