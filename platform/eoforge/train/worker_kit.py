"""What every Ray Train worker loop shares: who this worker is, collectives, checkpoints, rank-0 logging.

:func:`take_seat` wraps a worker's model for its group and opens rank 0's logger; the loops'
worker states extend the :class:`WorkerSeat` it returns. Pretraining (:mod:`eoforge.train.loop`)
and fine-tuning (:mod:`eoforge.finetune.loop`) run in lock-step worker groups. Each collective
here is a no-op on a single worker (or without ``torch.distributed``), so the loops read the
same with one worker or many. The checkpoint helpers write a state dict of tensors and plain
values (weights, optimiser state, loop position) and read it back with ``weights_only=True``
(:func:`eoforge.models.weights.load_checkpoint`); :func:`restore_checkpoint` is how a
(re)started worker picks up the run's latest one and :func:`report` how it hands one to Ray Train.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from eoforge.models.weights import load_checkpoint
from eoforge.tracking.runs import MetricLogger


def worker_rank() -> tuple[int, int]:
    """(rank, world size) of this Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def rank0_logger(mlflow: dict[str, str], rank: int) -> MetricLogger | None:
    """The metric logger into the job's run (``mlflow``: ``uri``, ``run_id``) on rank 0; None elsewhere."""
    return MetricLogger(mlflow["uri"], mlflow["run_id"]) if rank == 0 else None


def world_size() -> int:
    """Workers in the group (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_across_workers(value: float) -> float:
    """The mean of one float over the workers (every worker must call it)."""
    if world_size() > 1:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item() / world_size())
    return value


def min_across_workers(value: int) -> int:
    """The smallest of one int over the workers (every worker must call it)."""
    if world_size() > 1:
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())
    return value


def sum_across_workers(x: np.ndarray) -> np.ndarray:
    """Element-wise sum of an array over the workers, float64 of ``x``'s shape."""
    if world_size() > 1:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        dist.all_reduce(t)
        return t.numpy()
    return x.astype(np.float64)


def gather_lists(items: list[Any]) -> list[Any]:
    """Every worker's list, concatenated in rank order (picklable items)."""
    if world_size() > 1:
        parts: list[list[Any] | None] = [None] * world_size()
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in (part or [])]
    return items


def gather_dicts(mapping: dict[str, str]) -> dict[str, str]:
    """Every worker's dict, merged (a later rank's value wins on a shared key)."""
    if world_size() > 1:
        parts: list[dict[str, str] | None] = [None] * world_size()
        dist.all_gather_object(parts, mapping)
        merged: dict[str, str] = {}
        for part in parts:
            merged.update(part or {})
        return merged
    return mapping


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one pass over every parameter, on CPU and CUDA alike).

    The same update as the default per-tensor loop; on 2 CPU cores it cut a Dual-SimCLR step
    (resnet10t, batch 32 of 32 px chips) from 0.157 to 0.126 s.
    """
    return torch.optim.AdamW(params, fused=True, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under ``torch.compile`` and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def save_state(state: dict[str, Any], state_file: str, position: dict[str, int] | None = None) -> str:
    """Write ``state`` (tensors and plain values) to ``<new temp dir>/<state_file>``; returns the dir.

    ``position`` (the loop position: step, epoch, ...) is also written as ``position.json`` beside it,
    readable without torch. The caller reports the dir as a Ray checkpoint and removes it.
    """
    tmp = tempfile.mkdtemp(prefix="eoforge-ckpt-")
    torch.save(state, Path(tmp) / state_file)
    if position is not None:
        (Path(tmp) / "position.json").write_text(json.dumps(position))
    return tmp


def load_state(checkpoint_dir: str | Path, state_file: str) -> dict[str, Any]:
    """Read a checkpoint's state dict with ``weights_only=True`` (a pickled object is refused)."""
    return load_checkpoint(Path(checkpoint_dir) / state_file)


@dataclass
class WorkerSeat:
    """What every worker loop holds: its place in the group, the model it trains, the optimiser, rank 0's logger.

    ``model`` is what runs forward and backward (DDP-wrapped, maybe compiled); ``core`` the
    module under the wrappers (what is evaluated, saved and asked for its attributes).
    """

    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    core: Any
    opt: torch.optim.Optimizer
    logger: MetricLogger | None


def take_seat(
    module: torch.nn.Module,
    opt: torch.optim.Optimizer,
    mlflow: dict[str, str],
    compile_model: bool = False,
    some_parameters_idle: bool = False,
) -> WorkerSeat:
    """Wrap ``module`` for the worker group (device, DDP; ``torch.compile`` when asked) and open rank 0's logger.

    Restore a checkpoint into ``module`` and ``opt`` before: the wrappers share its parameters.
    ``some_parameters_idle``: some parameters get no gradient in some steps (a backbone frozen for a
    phase); DDP then looks for them every step (``find_unused_parameters``) instead of waiting for them.
    """
    import ray.train.torch

    rank, world = worker_rank()
    ddp = {"find_unused_parameters": True} if some_parameters_idle else None
    model = ray.train.torch.prepare_model(module, parallel_strategy_kwargs=ddp)
    if compile_model:
        model = torch.compile(model)
    device = ray.train.torch.get_device()
    return WorkerSeat(rank, world, device, model, unwrap(model), opt, rank0_logger(mlflow, rank))


def restore_checkpoint(state_file: str) -> dict[str, Any] | None:
    """The state of the run's latest checkpoint (Ray Train hands it to a restarted worker); None on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as checkpoint_dir:
        return load_state(checkpoint_dir, state_file)


def report(metrics: dict[str, Any], state_dir: str | None = None) -> None:
    """``ray.train.report`` (a barrier: every worker calls it), attaching ``state_dir`` as the checkpoint.

    Ray Train persists the checkpoint to the run's storage before returning; the local copy
    (``state_dir``, from :func:`save_state`, hundreds of MB) is removed then, whatever happened.
    """
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(state_dir) if state_dir else None
    try:
        ray.train.report(metrics, checkpoint=checkpoint)
    finally:
        if state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)


def lr_factor(step: int, warmup_steps: int, total_steps: int | None, schedule: str, min_ratio: float) -> float:
    """Multiplier of ``optim.lr`` at optimiser step ``step`` (0-based).

    Linear warm-up from 1/warmup to 1 over ``warmup_steps``, then constant, or cosine from 1 to
    ``min_ratio`` at ``total_steps`` (constant when the total is unknown).
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule != "cosine" or not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
