"""A probe job (``linear_probe`` or ``knn`` on a whole-chip task), run in the calling process.

A frozen backbone's features are computed once (:mod:`eoforge.finetune.probe`), so a probe's
work is one pass of the backbone over the labelled chips and then milliseconds of head
training. Started through Ray Train, the same probe spent about 40 s in worker-group start-up,
dataset shards and teardown for 0.05 s of head training (measured on this project's 2-core
machine). So probes run where the job runs: in the driver, or in the Tune trial's own process
in a sweep, reading the chips straight from the chip cache (:func:`~eoforge.finetune.labelled.iter_cached_chips`,
file by file: memory holds features, not pixels). The device is CUDA when this process has one.

The result is the same as a Ray Train run would report: metrics on val and test at the state
chosen on val, MLflow metrics and per-class tables, the backbone's SHA-256 before and after
(a probe never changes it), and a checkpoint directory ``<run.storage_path>/<run.name>/checkpoint_final``
that :func:`eoforge.finetune.run.register_finetuned` can register.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eoforge.config.finetune import FinetuneConfig
from eoforge.finetune.backbone_source import BackboneSpec, load_backbone, state_sha256
from eoforge.finetune.labelled import iter_cached_chips
from eoforge.finetune.loop import FINETUNE_STATE_FILE, _flat, _targets, model_inputs, per_class_csv
from eoforge.finetune.probe import fit_linear_probe, run_knn, score, solved_in_process
from eoforge.finetune.task_heads import FinetuneModel
from eoforge.finetune.tasks import Task
from eoforge.progress import say
from eoforge.tracking.runs import MetricLogger


def runs_in_process(cfg: FinetuneConfig) -> bool:
    """Whether a fine-tuning config is a probe job of this module (segmentation probes train a decoder on Ray Train)."""
    return solved_in_process(cfg.mode, cfg.task.kind)


def _features(
    model: FinetuneModel, cache: str, ids: list[str], task: Task, cfg: FinetuneConfig, device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """Pooled features (N, D) on ``device`` and targets (N, ...) of the cached chips ``ids``."""
    feats, targets = [], []
    with torch.no_grad():
        for batch in iter_cached_chips(cache, ids, batch_rows=cfg.train.batch_size):
            feats.append(model.backbone(*model_inputs(batch, device, cfg.data.normalize)).float())
            targets.append(_targets(task, batch))
    if not feats:
        return torch.zeros((0, 0), device=device), np.zeros(0)
    return torch.cat(feats), np.concatenate(targets)


def _save_checkpoint(model: FinetuneModel, final: dict[str, Any], best_step: int, cfg: FinetuneConfig) -> str:
    """Write the checkpoint directory to run storage; its path as Ray's Checkpoint takes it."""
    import pyarrow.fs as pafs

    from eoforge.storage import resolve_storage

    root, fs = resolve_storage(cfg.run.storage_path)
    dest = f"{root.rstrip('/')}/{cfg.run.name}/checkpoint_final"
    with tempfile.TemporaryDirectory(prefix="eoforge-probe-") as d:
        state = model.cpu().state_dict()
        torch.save(
            {"model": state, "best_state": state, "epoch": cfg.train.epochs, "best_epoch": best_step},
            Path(d) / FINETUNE_STATE_FILE,
        )
        (Path(d) / "final_metrics.json").write_text(json.dumps(final))
        target_fs = fs or pafs.LocalFileSystem()
        target_fs.create_dir(dest, recursive=True)
        pafs.copy_files(d, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target_fs)
    return dest


def run_probe(
    cfg: FinetuneConfig,
    task: Task,
    spec: BackboneSpec,
    cache: str,
    ids: dict[str, list[str]],
    chip_size: int,
    tracking_uri: str,
    run_id: str,
) -> tuple[dict[str, float], str]:
    """Run the probe; returns (final metrics, checkpoint path). ``ids``: chip ids of train, val and test."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.train.seed)
    backbone = load_backbone(spec, tracking_uri)
    sha_start = state_sha256(backbone)
    model = FinetuneModel(backbone, task.kind, task.num_classes, chip_size, probe=True).to(device)
    model.freeze_backbone()
    model.eval()
    logger = MetricLogger(tracking_uri, run_id)
    logger.client.set_tag(run_id, "eoforge.backbone_sha256_start", sha_start)
    metric_key = cfg.metric.split("/", 1)[1]
    t0 = time.perf_counter()
    train, val, test = (_features(model, cache, ids[s], task, cfg, device) for s in ("train", "val", "test"))
    say(f"{cfg.mode}: features of {len(train[1])} train, {len(val[1])} val, {len(test[1])} test chips "
        f"in {time.perf_counter() - t0:.1f}s on {device.type}")  # fmt: skip
    if cfg.mode == "knn":
        best_k, val_m, test_m, curve = run_knn(train, val, test, cfg.train.knn_k, task, metric_key)
        extra: dict[str, float] = {"knn/k": float(best_k)}
        extra.update({f"knn/val_{metric_key}_k{k}": v for k, v in curve.items()})
        best_step, last_step = 0, 0
    else:
        cs = cfg.train.probe_c

        def on_eval(i: int, loss: float, val_metrics: dict[str, Any]) -> None:
            logger.log({"probe/C": cs[i], "train/loss": loss, **_flat("val", val_metrics)}, i)

        state, best_c, _, iters = fit_linear_probe(model.head, train, val, task, cs, metric_key, on_eval)
        model.head.load_state_dict(state)
        model.head.eval()
        with torch.no_grad():
            val_m, test_m = score(task, model.head(val[0]), val[1]), score(task, model.head(test[0]), test[1])
        say(f"linear_probe: solved for C in {cs}; val {metric_key} best at C={best_c:g} ({iters} L-BFGS iterations)")
        extra = {"probe/C": best_c, "probe/lbfgs_iterations": float(iters)}
        best_step, last_step = 0, len(cs)  # no epochs: the chosen C is probe/C
    final = {
        "epoch": float(cfg.train.epochs),
        "best_epoch": float(best_step),
        **extra,
        **_flat("val", val_m),
        **_flat("test", test_m),
        "best/" + metric_key: float(val_m[metric_key]),
    }
    logger.log(final, last_step + 1)
    logger.close()
    logger.client.set_tag(run_id, "eoforge.backbone_sha256_end", state_sha256(model.backbone))
    for split_name, res in (("val", val_m), ("test", test_m)):
        if res["per_class"]:
            logger.client.log_text(
                run_id, per_class_csv(task.classes, res["per_class"]), f"metrics/per_class_{split_name}.csv"
            )
    return final, _save_checkpoint(model, final, best_step, cfg)
