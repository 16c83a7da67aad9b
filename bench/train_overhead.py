"""Ray Train's overhead on one worker: the same pretraining steps in a plain PyTorch loop and under Ray Train.

Both contenders train exactly what a ``kind: pretrain`` job with the default objective trains:
``build_objective(DualSimCLRConfig(), ModelConfig(backbone=--backbone))`` (Dual-SimCLR, one timm
backbone per sensor plus the [ISPRS22] projection heads, NT-Xent over the batch), fused AdamW
(``worker_kit.adamw``) with ``OptimConfig``'s default lr and weight decay, fp32, the step of :mod:`eoforge.train.loop`:
``loss = model(s1, s2)``, ``backward``, ``float(loss)``, the lr of ``lr_factor``, ``opt.step()``,
``zero_grad(set_to_none=True)``, ``after_step``. Same seed (``torch.manual_seed(--seed)`` before the
model is built), same batch, same ``torch.set_num_threads(--threads)`` in both.

- ``plain``: the loop in this (driver) process, the model on ``cuda:0`` with ``--gpu``, else the CPU.
- ``ray_train``: Ray Train V2's ``TorchTrainer`` with ``ScalingConfig(num_workers=1, use_gpu=--gpu,
  resources_per_worker={"CPU": --threads})``; ``train_loop_per_worker`` builds the model, wraps it
  with ``ray.train.torch.prepare_model`` (as the real loop does; one worker: no DDP wrapper) on
  ``ray.train.torch.get_device()``, runs the same steps, times them itself and hands its timings to
  the driver in one ``ray.train.report(metrics, checkpoint=...)`` at the end (V2 keeps the metrics
  of checkpointed reports only; the checkpoint is a few hundred bytes of JSON, written after the
  clock). The driver starts a local Ray with ``ray.init(address="local", num_cpus=--ray-cpus)`` (an
  existing cluster is used only with ``--address``), with eoforge's node settings
  (:func:`eoforge.ray_node.init_ray`), and shuts it down at the end. Every repeat is a fresh
  ``TorchTrainer(...).fit()``.

Data is not measured: the inputs are synthetic, made once per contender and repeat before the
clock starts, already on the device and already normalised (the shapes the objective's forward
takes: s1 (B, 2, H, W), s2 (B, 12, H, W), float32, standard normal from a seeded generator, the
same tensors in both contenders). The real loop's chip stream, ``normalize_batch`` (where the valid
mask is used), host-to-device copies, MLflow logging and checkpoint reports are left out.

Timing: each contender makes ``--warmup-steps`` untimed steps, then ``--steps`` timed steps
(``torch.cuda.synchronize`` before and after on CUDA); its step rate is ``--steps`` / that time.
The contenders alternate ``--repeats`` times (plain, ray, plain, ray, ...), so slow drifts of the
machine hit both; min/median/max and every repeat are reported.

Usage (progress on stderr, the last stdout line is the JSON)::

    PYTHONPATH=$PWD/platform python bench/train_overhead.py                      # resnet18, batch 32, 64 px, CPU
    PYTHONPATH=$PWD/platform python bench/train_overhead.py --gpu --steps 200 --batch-size 128

JSON fields (rates in optimiser steps per second, times in seconds, medians over the repeats unless
named otherwise):

- ``steps``, ``warmup_steps``, ``batch``, ``backbone``, ``chip_px``, ``threads``, ``repeats``,
  ``seed``, ``device`` (``cpu`` or the CUDA device name), ``ray_version``, ``torch_version``;
- ``plain_steps_per_s``, ``ray_train_steps_per_s``: in-loop step rate (after warm-up);
  ``*_steps_per_s_min`` / ``*_max`` / ``*_steps_per_s_all`` (one per repeat, in run order);
- ``ratio``: ``ray_train_steps_per_s / plain_steps_per_s`` (in-loop; 1.0 = no overhead);
  ``ratio_per_repeat``: the same for each (plain, ray) pair of a repeat;
- ``plain_end_to_end_s``: build the model + warm-up + timed steps in the driver;
  ``ray_train_end_to_end_s``: the wall time of ``TorchTrainer.fit()`` (worker start, model build,
  warm-up, timed steps, teardown); ``ratio_end_to_end``: ``plain_end_to_end_s /
  ray_train_end_to_end_s`` (the step-rate ratio with start-up included; it nears ``ratio`` as ``--steps`` grows);
- ``ray_train_startup_s``: from the ``fit()`` call to the worker entering its train function;
  ``ray_train_teardown_s``: from the worker's report call to ``fit()`` returning (wall clocks of
  the worker's and the driver's hosts: the same host unless ``--address``); ``ray_init_s``: the
  local ``ray.init`` (once, in no contender's time);
- ``goal``: ``{"ratio>=0.97": bool}`` (Ray Train's own anchor: within 2.5% of plain DDP).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # Ray Train V2 (the default since Ray 2.5x; explicit here)

S1_BANDS = 2
S2_BANDS = 12
GOAL = 0.97


def log(message: str) -> None:
    print(f"[train_overhead] {message}", file=sys.stderr, flush=True)


def make_batch(batch: int, chip_px: int, seed: int) -> tuple[Any, Any]:
    """Synthetic normalised (s1, s2) on the CPU, the same tensors for the same arguments."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    s1 = torch.randn(batch, S1_BANDS, chip_px, chip_px, generator=gen)
    s2 = torch.randn(batch, S2_BANDS, chip_px, chip_px, generator=gen)
    return s1, s2


def build(backbone: str, seed: int) -> tuple[Any, Any, list[Any]]:
    """The pretraining objective (Dual-SimCLR over ``backbone``), its AdamW and params, as the loop builds them."""
    import torch
    from eoforge.config.pretrain import DualSimCLRConfig, ModelConfig, OptimConfig
    from eoforge.ssl.objectives import build_objective
    from eoforge.train.worker_kit import adamw

    torch.manual_seed(seed)
    objective = build_objective(DualSimCLRConfig(), ModelConfig(backbone=backbone))
    optim = OptimConfig()
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = adamw(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return objective, opt, params


def run_steps(model: Any, core: Any, opt: Any, s1: Any, s2: Any, first: int, n: int, total: int) -> float:
    """``n`` optimiser steps of :mod:`eoforge.train.loop` (fp32, no accumulation); the last loss."""
    from eoforge.config.pretrain import OptimConfig
    from eoforge.train.worker_kit import lr_factor

    o = OptimConfig()
    loss_value = float("nan")
    for step in range(first, first + n):
        loss = model(s1, s2)
        loss.backward()
        loss_value = float(loss.detach())
        factor = lr_factor(step, o.warmup_steps, total, o.schedule, o.min_lr / o.lr)
        for group in opt.param_groups:
            group["lr"] = o.lr * factor
        opt.step()
        opt.zero_grad(set_to_none=True)
        core.after_step((step + 1) / total)
    return loss_value


def timed_training(
    model: Any, core: Any, opt: Any, s1: Any, s2: Any, cfg: dict[str, Any], device: Any
) -> dict[str, float]:
    """Warm-up steps, then the timed steps; the step rate and the last loss."""
    import torch

    cuda = device.type == "cuda"
    warmup, steps = cfg["warmup_steps"], cfg["steps"]
    total = warmup + steps
    model.train()
    run_steps(model, core, opt, s1, s2, 0, warmup, total)
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    loss = run_steps(model, core, opt, s1, s2, warmup, steps, total)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return {"steps_per_s": steps / elapsed, "timed_s": elapsed, "loss": loss}


def plain(cfg: dict[str, Any]) -> dict[str, float]:
    """Contender 1: the loop in this process."""
    import torch

    torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda", 0) if cfg["gpu"] else torch.device("cpu")
    t0 = time.perf_counter()
    objective, opt, _ = build(cfg["backbone"], cfg["seed"])
    objective = objective.to(device)
    s1, s2 = (t.to(device) for t in make_batch(cfg["batch"], cfg["chip_px"], cfg["seed"]))
    out = timed_training(objective, objective, opt, s1, s2, cfg, device)
    out["end_to_end_s"] = time.perf_counter() - t0
    del objective, opt, s1, s2
    gc.collect()
    if cfg["gpu"]:
        torch.cuda.empty_cache()
    return out


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """Contender 2: the same steps inside a Ray Train worker; its timings go to the driver in one report."""
    entered = time.time()
    t0 = time.perf_counter()
    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(cfg["threads"])
    device = ray.train.torch.get_device()
    objective, opt, _ = build(cfg["backbone"], cfg["seed"])
    model = ray.train.torch.prepare_model(objective)  # moves to the device; DDP only with > 1 worker
    core = model.module if hasattr(model, "module") else model
    s1, s2 = (t.to(device) for t in make_batch(cfg["batch"], cfg["chip_px"], cfg["seed"]))
    out: dict[str, Any] = dict(timed_training(model, core, opt, s1, s2, cfg, device))
    out["end_to_end_s"] = time.perf_counter() - t0
    out["entered_wall"] = entered
    out["threads_seen"] = torch.get_num_threads()
    out["device"] = str(device)
    out["reported_wall"] = time.time()
    # Ray Train V2 keeps the metrics of checkpointed reports only (Result.metrics): attach a tiny one
    tmp = tempfile.mkdtemp(prefix="eoforge-train-overhead-ckpt-")
    try:
        with open(os.path.join(tmp, "timings.json"), "w") as f:
            json.dump(out, f)
        ray.train.report(out, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ray_train(cfg: dict[str, Any], storage: str, name: str) -> dict[str, float]:
    """One ``TorchTrainer.fit()`` with one worker; the worker's timings plus start-up and teardown."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, use_gpu=cfg["gpu"], resources_per_worker={"CPU": cfg["threads"]}
        ),
        run_config=ray.train.RunConfig(name=name, storage_path=storage),
    )
    start_wall, t0 = time.time(), time.perf_counter()
    result = trainer.fit()
    end_to_end = time.perf_counter() - t0
    end_wall = time.time()
    m = dict(result.metrics or {})
    if "steps_per_s" not in m:
        raise RuntimeError(f"ray_train: the worker reported no timings: {m}")
    if m.get("threads_seen") != cfg["threads"]:
        log(f"warning: the worker runs {m.get('threads_seen')} torch threads, not {cfg['threads']}")
    return {
        "steps_per_s": float(m["steps_per_s"]),
        "timed_s": float(m["timed_s"]),
        "loss": float(m["loss"]),
        "worker_end_to_end_s": float(m["end_to_end_s"]),
        "end_to_end_s": end_to_end,
        "startup_s": float(m["entered_wall"]) - start_wall,
        "teardown_s": end_wall - float(m["reported_wall"]),
    }


def summary(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18", help="eoforge backbone or timm model name (both sensors)")
    ap.add_argument("--batch-size", type=int, default=32, help="chips per step")
    ap.add_argument("--steps", type=int, default=50, help="timed optimiser steps per contender and repeat")
    ap.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--chip-px", type=int, default=64, help="chip side in pixels")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads in both")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (plain, ray_train)")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed before the model is built")
    ap.add_argument("--gpu", action="store_true", help="train on CUDA (ScalingConfig(use_gpu=True))")
    ap.add_argument("--ray-cpus", type=int, default=None, help="num_cpus of the local Ray (default: --threads)")
    ap.add_argument("--address", default=None, help="connect to this Ray cluster instead of starting one")
    args = ap.parse_args()
    if args.batch_size < 2 or args.steps < 1 or args.warmup_steps < 0 or args.repeats < 1 or args.threads < 1:
        ap.error("needs --batch-size >= 2 (NT-Xent negatives), --steps >= 1, --repeats >= 1, --threads >= 1")

    import ray
    import torch
    from eoforge.ray_node import init_ray

    if args.gpu and not torch.cuda.is_available():
        ap.error("--gpu: CUDA is not available")
    cfg: dict[str, Any] = {
        "backbone": args.backbone,
        "batch": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "chip_px": args.chip_px,
        "threads": args.threads,
        "seed": args.seed,
        "gpu": args.gpu,
    }
    device = torch.cuda.get_device_name(0) if args.gpu else "cpu"
    log(f"{args.backbone}, batch {args.batch_size}, {args.chip_px} px, {args.threads} threads, {device}")

    t0 = time.perf_counter()
    if args.address:
        init_ray(address=args.address, log_to_driver=False)
    else:
        init_ray(address="local", num_cpus=args.ray_cpus or args.threads, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    log(f"ray.init {ray_init_s:.1f} s")
    storage = tempfile.mkdtemp(prefix="eoforge-train-overhead-")
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "ray_train": []}
    try:
        for r in range(args.repeats):
            p = plain(cfg)
            runs["plain"].append(p)
            log(f"repeat {r + 1}/{args.repeats} plain: {p['steps_per_s']:.3f} steps/s, loss {p['loss']:.4f}")
            q = ray_train(cfg, storage, f"train-overhead-{os.getpid()}-{r}")
            runs["ray_train"].append(q)
            log(
                f"repeat {r + 1}/{args.repeats} ray_train: {q['steps_per_s']:.3f} steps/s, loss {q['loss']:.4f}, "
                f"fit {q['end_to_end_s']:.1f} s (startup {q['startup_s']:.1f} s)"
            )
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)

    plain_rate = [x["steps_per_s"] for x in runs["plain"]]
    ray_rate = [x["steps_per_s"] for x in runs["ray_train"]]
    p_min, p_med, p_max = summary(plain_rate)
    r_min, r_med, r_max = summary(ray_rate)
    plain_e2e = statistics.median(x["end_to_end_s"] for x in runs["plain"])
    ray_e2e = statistics.median(x["end_to_end_s"] for x in runs["ray_train"])
    ratio = r_med / p_med
    out = {
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "batch": args.batch_size,
        "backbone": args.backbone,
        "chip_px": args.chip_px,
        "threads": args.threads,
        "repeats": args.repeats,
        "seed": args.seed,
        "device": device,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "plain_steps_per_s": round(p_med, 4),
        "plain_steps_per_s_min": round(p_min, 4),
        "plain_steps_per_s_max": round(p_max, 4),
        "plain_steps_per_s_all": [round(x, 4) for x in plain_rate],
        "ray_train_steps_per_s": round(r_med, 4),
        "ray_train_steps_per_s_min": round(r_min, 4),
        "ray_train_steps_per_s_max": round(r_max, 4),
        "ray_train_steps_per_s_all": [round(x, 4) for x in ray_rate],
        "ratio": round(ratio, 4),
        "ratio_per_repeat": [round(q / p, 4) for p, q in zip(plain_rate, ray_rate, strict=True)],
        "plain_end_to_end_s": round(plain_e2e, 3),
        "ray_train_end_to_end_s": round(ray_e2e, 3),
        "ratio_end_to_end": round(plain_e2e / ray_e2e, 4),
        "ray_train_startup_s": round(statistics.median(x["startup_s"] for x in runs["ray_train"]), 3),
        "ray_train_teardown_s": round(statistics.median(x["teardown_s"] for x in runs["ray_train"]), 3),
        "ray_init_s": round(ray_init_s, 3),
        "goal": {f"ratio>={GOAL}": ratio >= GOAL},
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
