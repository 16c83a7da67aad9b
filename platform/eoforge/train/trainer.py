"""One place that turns a job's ``scaling`` and ``run`` config into a Ray Train ``TorchTrainer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eoforge.config import RunConfig, ScalingConfig


def torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    scaling: ScalingConfig,
    run: RunConfig,
    *,
    keep_checkpoints: int,
    callbacks: list[Any] | None = None,
    datasets: dict[str, Any] | None = None,
) -> Any:
    """A ``TorchTrainer`` running ``loop`` on ``scaling.num_workers`` workers.

    One GPU per worker when ``scaling.use_gpu``, plus ``scaling.resources_per_worker`` (custom Ray
    resources that keep the workers on a node group); checkpoints go to ``run.storage_path`` (local,
    ``s3://``, ``gs://``: see :func:`eoforge.storage.resolve_storage`) under ``run.name``,
    the last ``keep_checkpoints`` kept; up to ``run.max_failures`` restarts. A restart after a
    worker or a whole node was lost starts every worker again from the last reported checkpoint
    (Ray Train V2: the controller waits until the group's resources are free again, e.g. until a
    replacement node joins); node preemptions that Ray recognises as such do not count against
    ``max_failures`` (``max_preemption_failures``, unlimited).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from eoforge.storage import resolve_storage

    storage_path, storage_fs = resolve_storage(run.storage_path)
    gpu = {"GPU": 1} if scaling.use_gpu else {}
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={**scaling.resources_per_worker, "CPU": scaling.cpus_per_worker, **gpu},
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )
