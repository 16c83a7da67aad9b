"""The per-worker pretraining loop (runs inside Ray Train, one process per GPU or CPU slot).

Every worker streams its shard of the chip dataset, runs the objective (backbones, heads,
momentum copies: :mod:`eoforge.ssl`) and steps the optimiser in lock-step with the others
(DDP). All workers call ``ray.train.report`` at the same steps (it is a barrier); rank 0
attaches the checkpoint and logs metrics to MLflow. A checkpoint holds the weights, the
optimiser state and the loop position (step, epoch, batches done in that epoch), so a
restarted run continues where the last checkpoint left it.

Data: with ``config["data"]`` (what :func:`eoforge.train.pretrain.run_pretrain` passes) every
worker streams its own shard of the plan per epoch (:func:`eoforge.data.dataset.build_plan_stream`
with the run's seed, the epoch and ``shard=(rank, world)``), so an epoch's row order is known
before reading and a resumed run skips the batches it already trained *without reading them*
(``skip_rows``). Batches arrive in storage units (uint16 S2, float16 S1, a valid mask) and are
normalised on the device (:func:`eoforge.data.normalize.normalize_batch`). Workers stop an epoch
together when the first one runs out. The epoch's mean batch diversity is logged as
``data/batch_distinct_tiles`` and ``data/same_tile_pair_share``.

A batch in which any worker has fewer valid chips than the objective needs (2 for every
method here) is skipped by all workers together: no optimiser step, nothing logged as the
loss; ``train/skipped_steps`` counts them. (It used to be a zero-gradient step logged as
``loss 0.0000``.)

Device switches (``train.*``): bf16 autocast, channels_last, ``torch.compile``, pinned
non-blocking host-to-device copies apply on CUDA; on CPU they are ignored with a note in the
log. Gradient accumulation (``grad_accum_steps`` micro-batches per optimiser step, DDP
gradient sync on the last only), linear warm-up + constant or cosine LR, and gradient-norm
clipping (``optim.*``) apply everywhere.

The loop reads as its steps: :func:`setup_worker` (objective, optimiser, restored state, device
switches, rank-0 logger), then per epoch :func:`run_epoch` over :func:`epoch_batches`, each batch
through :func:`train_on_batch` and every ``grad_accum_steps`` micro-batches :func:`optimizer_step`;
:func:`report_checkpoint` at every checkpoint and :func:`finish` at the end. What they share lives
in one :class:`PretrainWorker`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eoforge.config import PretrainConfig
from eoforge.data.dataset import build_plan_stream, split_ok
from eoforge.data.diversity import DiversityMeter
from eoforge.data.normalize import normalize_batch
from eoforge.errors import ChipReadError
from eoforge.progress import say
from eoforge.ssl.objectives import build_objective
from eoforge.train.worker_kit import (
    WorkerSeat,
    adamw,
    gather_dicts,
    lr_factor,
    mean_across_workers,
    min_across_workers,
    report,
    restore_checkpoint,
    save_state,
    take_seat,
    worker_rank,
)
from eoforge.train.worker_kit import load_state as load_kit_state

STATE_FILE = "state.pt"


def load_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Load a checkpoint's state dict (weights under ``model``, loop position keys)."""
    return load_kit_state(checkpoint_dir, STATE_FILE)


def device_plan(cfg: Any, device: torch.device) -> tuple[dict[str, bool], list[str]]:
    """Which GPU switches apply on ``device``, and log notes for those ignored."""
    cuda = device.type == "cuda"
    wanted = {
        "bf16": cfg.train.precision == "bf16",
        "channels_last": cfg.train.channels_last,
        "compile": cfg.train.compile,
        "non_blocking": cfg.train.non_blocking,
        "sync_batchnorm": cfg.model.sync_batchnorm and cfg.scaling.num_workers > 1,
    }
    active = {k: v and cuda for k, v in wanted.items()}
    ignored = [k for k, v in wanted.items() if v and not cuda]
    notes = [f"device is {device.type}: ignoring {', '.join(ignored)} (CUDA only)"] if ignored else []
    return active, notes


@dataclass
class PretrainWorker(WorkerSeat):
    """One worker's part of the run: its seat (``core``: the objective), where the loop stands, what it counted.

    ``position`` is what a checkpoint records (``step``, ``epoch``, ``epoch_batches``: batches of
    that epoch done); ``step`` the optimiser steps so far. Micro-batch accumulators carry over
    epoch ends, as gradients do.
    """

    cfg: PretrainConfig
    active: dict[str, bool]
    params: list[torch.nn.Parameter]
    position: dict[str, int]
    resumed: bool
    materialized: str | None
    step: int = 0
    last_report: int = 0
    done: bool = False
    loss_value: float = float("nan")
    skipped_steps: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    micro: int = 0
    micro_losses: list[float] = field(default_factory=list)
    micro_chips: int = 0
    t_last: float = field(default_factory=time.perf_counter)

    def autocast(self) -> Any:
        """bf16 autocast on CUDA when asked for, else a no-op context."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.active["bf16"] else contextlib.nullcontext()


def restore_state(objective: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, int], bool]:
    """Load the run's latest checkpoint into ``objective`` and ``opt``; returns (loop position, resumed)."""
    position = {"step": 0, "epoch": 0, "epoch_batches": 0}
    state = restore_checkpoint(STATE_FILE)
    if state is None:
        return position, False
    objective.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return {k: int(state[k]) for k in position}, True


def setup_worker(config: dict[str, Any]) -> PretrainWorker:
    """Objective and optimiser (seeded), the checkpoint restored, device switches applied, the rank-0 logger."""
    import ray.train.torch

    cfg = PretrainConfig.model_validate(config["cfg"])
    rank = worker_rank()[0]
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    active, notes = device_plan(cfg, device)
    objective = build_objective(cfg.objective, cfg.model)
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    position, resumed = restore_state(objective, opt)
    if resumed and rank == 0:
        say(f"resumed from checkpoint at step {position['step']} (epoch {position['epoch']})")
    if active["sync_batchnorm"] and objective.uses_batch_stats:
        objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    if active["channels_last"]:
        objective = objective.to(memory_format=torch.channels_last)
    seat = take_seat(objective, opt, config["mlflow"], compile_model=active["compile"])
    if rank == 0:
        for note in notes:
            say(note)
        on = [k for k, v in active.items() if v]
        say(f"objective {cfg.objective.kind} on {device}; GPU switches on: {on or 'none'}")
    if seat.logger is not None:
        seat.logger.log({"resumed_from_step": position["step"]}, step=position["step"])
    step = position["step"]
    return PretrainWorker(
        **vars(seat),
        cfg=cfg,
        active=active,
        params=params,
        position=position,
        resumed=resumed,
        materialized=config.get("materialized"),
        step=step,
        last_report=step,
        done=cfg.train.max_steps is not None and step >= cfg.train.max_steps,
    )


def epoch_batches(w: PretrainWorker, epoch: int, skip_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """This worker's batches of ``epoch``, the first ``skip_batches`` left out before reading.

    Its own seeded shard of ``cfg.data`` streamed from the plan's COGs, or, when the driver
    materialised the plan, of the decoded chips (same order rules).
    """
    import ray.data

    cfg = w.cfg
    if w.materialized:
        from eoforge.data.materialized import iter_materialized_batches

        yield from iter_materialized_batches(
            w.materialized,
            cfg.data.split,
            cfg.train.batch_size,
            seed=cfg.train.seed,
            epoch=epoch,
            shard=(w.rank, w.world),
            skip_rows=skip_batches * cfg.train.batch_size,
            mix=cfg.data.mix_windows,
        )
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ds = build_plan_stream(
            cfg.data,
            shuffle_seed=cfg.train.seed,
            epoch=epoch,
            skip_rows=skip_batches * cfg.train.batch_size,
            shard=(w.rank, w.world),
        )
    except ChipReadError:
        return  # nothing left for this worker in this epoch
    yield from ds.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy", prefetch_batches=2)


def model_inputs(w: PretrainWorker, good: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(s1, s2) on the device: storage units (uint16 / float16) cross to it and are normalised there."""

    def to_device(a: Any) -> torch.Tensor:
        t = torch.from_numpy(a)
        if w.active["non_blocking"]:
            return t.pin_memory().to(w.device, non_blocking=True)
        return t.to(w.device)

    s2, s1 = normalize_batch(
        to_device(good["s2"]), to_device(good["s1"]), to_device(good["valid"]), w.cfg.data.normalize
    )
    if w.active["channels_last"]:
        s1, s2 = (t.contiguous(memory_format=torch.channels_last) for t in (s1, s2))
    return s1, s2


def train_on_batch(w: PretrainWorker, good: dict[str, Any], n_local: int) -> bool:
    """Forward and backward on one micro-batch; True when it completes an accumulation (time to step).

    DDP synchronises gradients on the last micro-batch of an accumulation only.
    """
    s1, s2 = model_inputs(w, good)
    w.micro += 1
    last_micro = w.micro == w.cfg.train.grad_accum_steps
    no_sync: Callable[[], Any] | None = getattr(w.model, "no_sync", None)
    sync = contextlib.nullcontext() if last_micro or no_sync is None else no_sync()
    with sync:
        with w.autocast():
            loss = w.model(s1, s2)
        (loss / w.cfg.train.grad_accum_steps).backward()
    w.micro_losses.append(float(loss.detach()))
    w.micro_chips += n_local
    return last_micro


def optimizer_step(w: PretrainWorker, epoch: int) -> None:
    """LR schedule, clipping, one optimiser step; the loss and throughput averaged over workers, logged on rank 0."""
    cfg, o = w.cfg, w.cfg.optim
    max_steps = cfg.train.max_steps
    factor = lr_factor(w.step, o.warmup_steps, max_steps, o.schedule, o.min_lr / o.lr)
    for group in w.opt.param_groups:
        group["lr"] = o.lr * factor
    grad_norm = None
    if o.grad_clip_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(w.params, o.grad_clip_norm))
    w.opt.step()
    w.opt.zero_grad(set_to_none=True)
    w.step += 1
    w.core.after_step(w.step / max_steps if max_steps else 0.0)  # momentum schedules need a known length
    w.loss_value = mean_across_workers(sum(w.micro_losses) / len(w.micro_losses))
    now = time.perf_counter()
    chips_per_s = mean_across_workers(w.micro_chips / max(now - w.t_last, 1e-9)) * w.world
    w.t_last = now
    w.micro, w.micro_losses, w.micro_chips = 0, [], 0
    if w.logger is not None and w.step % cfg.train.log_every_steps == 0:
        metrics = {"train/loss": w.loss_value, "train/chips_per_s": chips_per_s, "train/lr": o.lr * factor}
        if grad_norm is not None:
            metrics["train/grad_norm"] = grad_norm
        w.logger.log({**metrics, "epoch": epoch}, w.step)
        total = f"/{max_steps}" if max_steps else ""
        say(
            f"step {w.step}{total} epoch {epoch + 1}/{cfg.train.epochs} "
            f"loss {w.loss_value:.4f} {chips_per_s:.1f} chips/s"
        )


def report_checkpoint(w: PretrainWorker) -> None:
    """Report step, epoch and loss to Ray Train with rank 0's checkpoint (weights, optimiser, position)."""
    metrics = {"step": w.step, "epoch": w.position["epoch"], "loss": w.loss_value}
    state_dir = None
    if w.rank == 0:
        position = {**w.position, "step": w.step}
        state = {"model": w.core.state_dict(), "optimizer": w.opt.state_dict(), **position}
        state_dir = save_state(state, STATE_FILE, position)
    report(metrics, state_dir)
    w.last_report = w.step


def run_epoch(w: PretrainWorker, epoch: int, skip: int) -> None:
    """One epoch of this worker's shard, its first ``skip`` batches already trained (a resumed run).

    Every worker stops when the first runs out (shards may differ by a few rows); a batch in
    which some worker has fewer valid chips than the objective needs is skipped by all.
    """
    cfg, max_steps = w.cfg, w.cfg.train.max_steps
    w.position["epoch"], w.position["epoch_batches"] = epoch, 0
    diversity = DiversityMeter()
    batches = epoch_batches(w, epoch, skip)
    batch_idx = skip - 1
    while True:
        batch = next(batches, None)
        batch_idx += 1
        good, errors = split_ok(batch) if batch is not None else ({"chip_id": []}, {})
        w.skipped.update(errors)
        n_local = len(good["chip_id"])
        n_ok = min_across_workers(n_local if batch is not None else -1)
        if n_ok < 0:
            break
        w.position["epoch_batches"] = batch_idx + 1
        if "tile_key" in batch:
            diversity.add(batch["tile_key"])
        if n_ok < w.core.min_batch:  # no step, no loss logged (never "loss 0")
            w.skipped_steps += 1
            if w.logger is not None:
                w.logger.log({"train/skipped_steps": w.skipped_steps}, w.step)
                say(f"batch {batch_idx} skipped: a worker has < {w.core.min_batch} valid chips")
            continue
        if not train_on_batch(w, good, n_local):
            continue
        optimizer_step(w, epoch)
        if w.step % cfg.train.checkpoint_every_steps == 0:
            report_checkpoint(w)
        if max_steps is not None and w.step >= max_steps:
            w.done = True
            break
    if not w.done:
        w.position["epoch"], w.position["epoch_batches"] = epoch + 1, 0
    if w.logger is not None and not math.isnan(w.loss_value):
        w.logger.log({"epoch/loss": w.loss_value}, w.step)
    if w.logger is not None and diversity.n:
        w.logger.log(diversity.means(), w.step)


def finish(w: PretrainWorker) -> None:
    """Log the chips every worker skipped and the skipped steps; the last checkpoint if not reported yet."""
    all_skipped = gather_dicts(w.skipped)
    if w.logger is not None:
        w.logger.log({"data/skipped_chips": len(all_skipped), "train/skipped_steps": w.skipped_steps}, w.step)
        w.logger.client.log_dict(w.logger.run_id, dict(sorted(all_skipped.items())), "data/skipped_chips.json")
        w.logger.close()  # what an MLflow outage held back is sent now, or counted as lost in the run
    if w.step != w.last_report or not w.resumed:
        report_checkpoint(w)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entrypoint. ``config``: ``cfg`` (PretrainConfig as dict), ``mlflow`` and ``materialized``."""
    w = setup_worker(config)
    resume_skip = w.position["epoch_batches"]
    for epoch in range(w.position["epoch"], w.cfg.train.epochs):
        if w.done:
            break
        skip, resume_skip = resume_skip, 0
        run_epoch(w, epoch, skip)
    finish(w)
