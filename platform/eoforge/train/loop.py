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
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from eoforge.progress import say
from eoforge.train.worker_kit import (
    gather_dicts,
    mean_across_workers,
    min_across_workers,
    save_state,
    unwrap,
)
from eoforge.train.worker_kit import load_state as load_kit_state

STATE_FILE = "state.pt"


def _save_state(model: torch.nn.Module, opt: torch.optim.Optimizer, position: dict[str, int]) -> str:
    state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), **position}
    return save_state(state, STATE_FILE, position)


def load_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Load a checkpoint's state dict (weights under ``model``, loop position keys)."""
    return load_kit_state(checkpoint_dir, STATE_FILE)


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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entrypoint. ``config`` holds ``cfg`` (PretrainConfig as dict) and ``mlflow``."""
    import ray.train
    import ray.train.torch

    from eoforge.config import PretrainConfig
    from eoforge.data.dataset import split_ok
    from eoforge.data.diversity import DiversityMeter
    from eoforge.data.normalize import normalize_batch
    from eoforge.ssl.objectives import build_objective
    from eoforge.tracking.runs import MetricLogger

    cfg = PretrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    active, notes = device_plan(cfg, device)
    objective = build_objective(cfg.objective, cfg.model)
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    position = {"step": 0, "epoch": 0, "epoch_batches": 0}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_state(ckpt_dir)
        objective.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        position = {k: int(state[k]) for k in position}
        if rank == 0:
            say(f"resumed from checkpoint at step {position['step']} (epoch {position['epoch']})")
    if active["sync_batchnorm"] and objective.uses_batch_stats:
        objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    if active["channels_last"]:
        objective = objective.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(objective)
    if active["compile"]:
        model = torch.compile(model)
    core = unwrap(model)
    if rank == 0:
        for note in notes:
            say(note)
        on = [k for k, v in active.items() if v]
        say(f"objective {cfg.objective.kind} on {device}; GPU switches on: {on or 'none'}")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if active["bf16"] else contextlib.nullcontext

    logger = MetricLogger(config["mlflow"]["uri"], config["mlflow"]["run_id"]) if rank == 0 else None
    if logger is not None:
        logger.log({"resumed_from_step": position["step"]}, step=position["step"])
    # each worker streams its own seeded shard of cfg.data per epoch (fast resume), from the plan's COGs or,
    # when the driver materialised the plan, from the decoded chips
    materialized: str | None = config.get("materialized")
    skipped: dict[str, str] = {}
    step, max_steps = position["step"], cfg.train.max_steps
    accum = cfg.train.grad_accum_steps
    last_report = step
    loss_value = float("nan")
    skipped_steps = 0
    micro, micro_losses, micro_chips = 0, [], 0

    def report() -> None:
        nonlocal last_report
        metrics = {"step": step, "epoch": position["epoch"], "loss": loss_value}
        ckpt_dir = _save_state(model, opt, {**position, "step": step}) if rank == 0 else None
        ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        try:
            ray.train.report(metrics, checkpoint=ckpt)  # persists the checkpoint to storage before returning
        finally:
            if ckpt_dir:
                shutil.rmtree(ckpt_dir, ignore_errors=True)  # the local copy only (hundreds of MB each)
        last_report = step

    def to_device(a: Any) -> torch.Tensor:
        t = torch.from_numpy(a)
        if active["non_blocking"]:
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    def inputs(good: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        # storage units (uint16 / float16) cross to the device; normalised there
        s2, s1 = normalize_batch(
            to_device(good["s2"]), to_device(good["s1"]), to_device(good["valid"]), cfg.data.normalize
        )
        if active["channels_last"]:
            s1, s2 = (t.contiguous(memory_format=torch.channels_last) for t in (s1, s2))
        return s1, s2

    def epoch_batches(epoch: int, skip_batches: int) -> Any:
        """This worker's batches of ``epoch``, the first ``skip_batches`` left out before reading."""
        import ray.data

        from eoforge.data.dataset import build_plan_stream
        from eoforge.errors import ChipReadError

        if materialized:  # this worker's files of the cache, same order rules
            from eoforge.data.materialized import iter_materialized_batches

            yield from iter_materialized_batches(
                materialized,
                cfg.data.split,
                cfg.train.batch_size,
                seed=cfg.train.seed,
                epoch=epoch,
                shard=(rank, world),
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
                shard=(rank, world),
            )
        except ChipReadError:
            return  # nothing left for this worker in this epoch
        yield from ds.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy", prefetch_batches=2)

    done = max_steps is not None and step >= max_steps
    resume_skip = position["epoch_batches"]
    t_last = time.perf_counter()
    for epoch in range(position["epoch"], cfg.train.epochs):
        if done:
            break
        position["epoch"], position["epoch_batches"] = epoch, 0
        skip, resume_skip = resume_skip, 0
        diversity = DiversityMeter()
        batches = epoch_batches(epoch, skip)
        batch_idx = skip - 1
        while True:
            batch = next(batches, None)
            batch_idx += 1
            good, errors = split_ok(batch) if batch is not None else ({"chip_id": []}, {})
            skipped.update(errors)
            # every worker stops when the first runs out (shards may differ by a few rows)
            local_ok = len(good["chip_id"])
            n_ok = min_across_workers(local_ok if batch is not None else -1)
            if n_ok < 0:
                break
            position["epoch_batches"] = batch_idx + 1
            if "tile_key" in batch:
                diversity.add(batch["tile_key"])
            if n_ok < core.min_batch:
                # every worker skips this batch together: no step, no loss logged (never "loss 0")
                skipped_steps += 1
                if logger is not None:
                    logger.log({"train/skipped_steps": skipped_steps}, step)
                    say(f"batch {batch_idx} skipped: a worker has < {core.min_batch} valid chips")
                continue
            s1, s2 = inputs(good)
            micro += 1
            last_micro = micro == accum
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast():
                    loss = model(s1, s2)
                (loss / accum).backward()
            micro_losses.append(float(loss.detach()))
            micro_chips += local_ok
            if not last_micro:
                continue
            o = cfg.optim
            factor = lr_factor(step, o.warmup_steps, max_steps, o.schedule, o.min_lr / o.lr)
            for group in opt.param_groups:
                group["lr"] = cfg.optim.lr * factor
            grad_norm = None
            if cfg.optim.grad_clip_norm is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip_norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            core.after_step(step / max_steps if max_steps else 0.0)  # momentum schedules need a known length
            loss_value = mean_across_workers(sum(micro_losses) / len(micro_losses))
            now = time.perf_counter()
            chips_per_s = mean_across_workers(micro_chips / max(now - t_last, 1e-9)) * world
            t_last = now
            micro, micro_losses, micro_chips = 0, [], 0
            if logger is not None and step % cfg.train.log_every_steps == 0:
                metrics = {"train/loss": loss_value, "train/chips_per_s": chips_per_s, "train/lr": o.lr * factor}
                if grad_norm is not None:
                    metrics["train/grad_norm"] = grad_norm
                logger.log({**metrics, "epoch": epoch}, step)
                total = f"/{max_steps}" if max_steps else ""
                say(
                    f"step {step}{total} epoch {epoch + 1}/{cfg.train.epochs} "
                    f"loss {loss_value:.4f} {chips_per_s:.1f} chips/s"
                )
            if step % cfg.train.checkpoint_every_steps == 0:
                report()
            if max_steps is not None and step >= max_steps:
                done = True
                break
        if not done:
            position["epoch"], position["epoch_batches"] = epoch + 1, 0
        if logger is not None and not math.isnan(loss_value):
            logger.log({"epoch/loss": loss_value}, step)
        if logger is not None and diversity.n:
            logger.log(diversity.means(), step)

    all_skipped = gather_dicts(skipped)
    if logger is not None:
        logger.log({"data/skipped_chips": len(all_skipped), "train/skipped_steps": skipped_steps}, step)
        logger.client.log_dict(logger.run_id, dict(sorted(all_skipped.items())), "data/skipped_chips.json")
        logger.close()  # what an MLflow outage held back is sent now, or counted as lost in the run
    if step != last_report or checkpoint is None:
        report()
