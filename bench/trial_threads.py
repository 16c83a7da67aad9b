"""Does a fine-tuning trial gain from a second core? One step on 1 and 2 threads, and two 1-thread processes at once.

The model is what a ``kind: finetune`` classification trial trains: ``FinetuneModel`` over a
``DualBackbone`` of two timm ``--backbone`` models (S1: 2 channels, S2: 12), a linear head over
``--classes`` classes, AdamW at 3e-3, cross-entropy, every parameter trained. The inputs are
synthetic and made once before the clock: s1 (B, 2, H, W), s2 (B, 12, H, W) float32 standard normal,
B = ``--batch``, H = W = ``--chip-px``. Data, normalisation, augmentation and Ray are left out.

Contenders (each in a fresh process, ``torch.set_num_threads(n)``, ``--warmup`` untimed steps then
``--steps`` timed ones):

- ``threads_2``: one process on two threads (what a trial with ``cpus_per_worker: 2`` runs);
- ``threads_1``: one process on one thread;
- ``threads_1_x2``: two one-thread processes started together (two one-core trials at once).

``throughput_ratio_two_trials`` = 2 x s/step(threads_2) / mean s/step(threads_1_x2): how much more
work two one-core trials do than one two-core trial (session 13, this 2-core machine, resnet10t,
32 px, batch 32: 1.43x, 1.61x and 1.90x in three runs, the two-thread step varying from 0.25 to 0.33 s;
resnet18 1.55x).

Usage: python bench/trial_threads.py [--backbone resnet10t] [--chip-px 32] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step_seconds(backbone: str, threads: int, chip_px: int, batch: int, classes: int, warmup: int, steps: int) -> float:
    """Mean wall seconds of one optimiser step of the fine-tuning model on ``threads`` torch threads."""
    import torch
    from eoforge.finetune.task_heads import FinetuneModel
    from eoforge.models.backbones import create_backbone
    from eoforge.models.dual import DualBackbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = FinetuneModel(
        DualBackbone(create_backbone(backbone, 2), create_backbone(backbone, 12), backbone), "classification", classes
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    s1, s2 = torch.randn(batch, 2, chip_px, chip_px), torch.randn(batch, 12, chip_px, chip_px)
    target = torch.randint(0, classes, (batch,))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(s1, s2), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def _spawn(args: argparse.Namespace, threads: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--one", str(threads)]
    for k in ("backbone", "chip_px", "batch", "classes", "warmup", "steps"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def _read(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"trial_threads: a contender failed (exit {proc.returncode})")
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--chip-px", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: one contender process
    args = ap.parse_args()
    if args.one:
        print(step_seconds(args.backbone, args.one, args.chip_px, args.batch, args.classes, args.warmup, args.steps))
        return
    two = _read(_spawn(args, 2))
    one = _read(_spawn(args, 1))
    pair = [_spawn(args, 1), _spawn(args, 1)]
    pair_s = [_read(p) for p in pair]
    result = {
        "bench": "trial_threads",
        "backbone": args.backbone,
        "chip_px": args.chip_px,
        "batch": args.batch,
        "s_per_step": {
            "threads_2": round(two, 4),
            "threads_1": round(one, 4),
            "threads_1_x2": [round(x, 4) for x in pair_s],
        },
        "throughput_ratio_two_trials": round(2 * two / (sum(pair_s) / 2), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
