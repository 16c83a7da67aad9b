"""Step time and peak memory of every SSL objective, printed as one JSON line last.

Each objective runs in its own process (so the peak resident memory is its own) with a fixed
backbone and batch: ResNet-18 (MAE: ViT-S/16, the only family it takes), batch 16 per step,
64 x 64 px chips (S1: 2 bands, S2: 12), proj_dim 128. After ``--warmup`` steps, ``--steps``
optimiser steps (forward, backward, AdamW, momentum update) are timed. On CUDA the peak is
``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set size (ru_maxrss).
Usage: python bench/objectives.py [--steps 5] [--batch 16] [--size 64] [--only KIND]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def one(kind: str, steps: int, warmup: int, batch: int, size: int) -> dict[str, float | str]:
    import torch
    from eoforge.config.pretrain import ModelConfig, ObjectiveConfig
    from eoforge.ssl.objectives import build_objective

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    backbone = "vit_s16" if kind == "mae" else "resnet18"
    model_cfg = ModelConfig(backbone=backbone, proj_dim=128, img_size=size if kind == "mae" else None)
    extra = {"queue_size": 4096} if kind == "moco_v2" else {}
    obj = build_objective(ObjectiveConfig.model_validate({"kind": kind, **extra}), model_cfg).to(dev).train()
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-4)
    s1, s2 = torch.randn(batch, 2, size, size, device=dev), torch.randn(batch, 12, size, size, device=dev)

    def step(i: int) -> None:
        loss = obj(s1, s2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        obj.after_step(i / (warmup + steps))

    for i in range(warmup):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "backbone": backbone,
        "step_s": round((time.perf_counter() - t0) / steps, 4),
        "peak_mem_mb": round(peak_mb, 1),
        "peak_mem_kind": "cuda_max_allocated" if dev.type == "cuda" else "cpu_max_rss",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", help="run one objective in this process (used by the parent run)")
    args = ap.parse_args()
    if args.only:
        print(json.dumps(one(args.only, args.steps, args.warmup, args.batch, args.size)))
        return
    import torch
    from eoforge.ssl.objectives import list_objectives

    results = {}
    for kind, _ in list_objectives():
        cmd = [sys.executable, __file__, "--only", kind, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--batch", str(args.batch), "--size", str(args.size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[kind] = json.loads(out)
        print(f"{kind}: {results[kind]}", file=sys.stderr, flush=True)
    summary = {
        "bench": "objectives",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size_px": args.size,
        "steps": args.steps,
        "objectives": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
