"""The per-worker pretraining loop (runs inside Ray Train, one process per GPU or CPU slot).

Every worker streams its shard of the chip dataset, runs the dual encoder and the
objective, and steps the optimiser in lock-step with the others (DDP). All workers call
``ray.train.report`` at the same steps (it is a barrier); rank 0 attaches the checkpoint
and logs metrics to MLflow. A checkpoint holds the weights, the optimiser state and the
loop position (step, epoch, batches done in that epoch), so a restarted run continues
where the last checkpoint left it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STATE_FILE = "state.pt"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _mean_across_workers(value: float) -> float:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item() / dist.get_world_size())
    return value


def _gather_errors(errors: dict[str, str]) -> dict[str, str]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[dict[str, str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, errors)
        merged: dict[str, str] = {}
        for part in gathered:
            merged.update(part or {})
        return merged
    return errors


def _save_state(model: torch.nn.Module, opt: torch.optim.Optimizer, position: dict[str, int]) -> str:
    tmp = tempfile.mkdtemp(prefix="eoforge-ckpt-")
    torch.save(
        {"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), **position}, Path(tmp) / STATE_FILE
    )
    (Path(tmp) / "position.json").write_text(json.dumps(position))
    return tmp


def load_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Load a checkpoint's state dict (weights under ``model``, loop position keys)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entrypoint. ``config`` holds ``cfg`` (PretrainConfig as dict) and ``mlflow``."""
    import ray.train
    import ray.train.torch

    from eoforge.config import PretrainConfig
    from eoforge.data.dataset import split_ok
    from eoforge.models.dual import DualEncoder
    from eoforge.ssl.registry import build_objective
    from eoforge.tracking.runs import MetricLogger

    cfg = PretrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)
    model = DualEncoder(cfg.model.backbone, cfg.model.proj_dim, cfg.model.proj_hidden_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    objective = build_objective(cfg.objective.kind, temperature=cfg.objective.temperature)
    position = {"step": 0, "epoch": 0, "epoch_batches": 0}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_state(ckpt_dir)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        position = {k: int(state[k]) for k in position}
        if rank == 0:
            print(
                f"[eoforge] resumed from checkpoint at step {position['step']} (epoch {position['epoch']})", flush=True
            )
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()

    logger = MetricLogger(config["mlflow"]["uri"], config["mlflow"]["run_id"]) if rank == 0 else None
    if logger is not None:
        logger.log({"resumed_from_step": position["step"]}, step=position["step"])
    shard = ray.train.get_dataset_shard("train")
    skipped: dict[str, str] = {}
    step, max_steps = position["step"], cfg.train.max_steps
    last_report = step
    loss_value = float("nan")

    def report() -> None:
        nonlocal last_report
        metrics = {"step": step, "epoch": position["epoch"], "loss": loss_value}
        ckpt_dir = _save_state(model, opt, {**position, "step": step}) if rank == 0 else None
        ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=ckpt)
        last_report = step

    done = max_steps is not None and step >= max_steps
    resume_skip = position["epoch_batches"]
    for epoch in range(position["epoch"], cfg.train.epochs):
        if done:
            break
        position["epoch"], position["epoch_batches"] = epoch, 0
        skip, resume_skip = resume_skip, 0
        t_last = time.perf_counter()
        for batch_idx, batch in enumerate(
            shard.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy", prefetch_batches=2)
        ):
            good, errors = split_ok(batch)
            skipped.update(errors)
            if batch_idx < skip:  # resumed mid-epoch: these batches were trained before the checkpoint
                position["epoch_batches"] = batch_idx + 1
                continue
            n_ok = len(good["chip_id"])
            if n_ok >= 2:
                s1 = torch.from_numpy(good["s1"]).to(device)
                s2 = torch.from_numpy(good["s2"]).to(device)
                u, v = model(s1, s2)
                loss = objective(u, v)
            else:  # keep DDP in lock-step: a zero-gradient step through every parameter
                loss = sum(p.sum() for p in model.parameters()) * 0.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            position["epoch_batches"] = batch_idx + 1
            loss_value = _mean_across_workers(float(loss.detach()))
            now = time.perf_counter()
            chips_per_s = _mean_across_workers(n_ok / max(now - t_last, 1e-9)) * world
            t_last = now
            if logger is not None and step % cfg.train.log_every_steps == 0:
                logger.log({"train/loss": loss_value, "train/chips_per_s": chips_per_s, "epoch": epoch}, step)
                total = f"/{max_steps}" if max_steps else ""
                print(
                    f"[eoforge] step {step}{total} epoch {epoch + 1}/{cfg.train.epochs} "
                    f"loss {loss_value:.4f} {chips_per_s:.1f} chips/s",
                    flush=True,
                )
            if step % cfg.train.checkpoint_every_steps == 0:
                report()
            if max_steps is not None and step >= max_steps:
                done = True
                break
        if not done:
            position["epoch"], position["epoch_batches"] = epoch + 1, 0
        if logger is not None:
            logger.log({"epoch/loss": loss_value}, step)

    all_skipped = _gather_errors(skipped)
    if logger is not None:
        logger.log({"data/skipped_chips": len(all_skipped)}, step)
        logger.client.log_dict(logger.run_id, dict(sorted(all_skipped.items())), "data/skipped_chips.json")
    if step != last_report or checkpoint is None:
        report()
