"""Typed configs: one pydantic model per YAML ``kind``, one module per kind.

| ``kind:`` | model | module |
|---|---|---|
| ``data`` | :class:`DataConfig` | :mod:`eoforge.config.data` |
| ``pretrain`` | :class:`PretrainConfig` | :mod:`eoforge.config.pretrain` |
| ``finetune`` | :class:`FinetuneConfig` | :mod:`eoforge.config.finetune` |
| ``sweep`` | :class:`SweepConfig` | :mod:`eoforge.config.sweep` |
| ``predict`` | :class:`PredictConfig` | :mod:`eoforge.config.predict` |

The chip grid and sampling strategies of ``data`` (``chips``) are in :mod:`eoforge.config.sampling`.
Sections shared by job kinds (plan input, scaling, run) are in :mod:`eoforge.config.jobs`;
the base model, types and YAML helpers in :mod:`eoforge.config.base`. A config is validated
before any work starts. Errors name the field path and the reason
(``train.batch_size: Input should be greater than 0``) and are raised as
:class:`~eoforge.errors.ConfigError`; the CLI and ``jobs/`` turn them into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eoforge.config.base import (
    Strict,
    apply_overrides,
    expand_vars,
    format_validation_error,
    load_raw,
)
from eoforge.config.data import CatalogConfig, ChipGridConfig, DataConfig, PairingConfig, SplitConfig
from eoforge.config.finetune import FinetuneConfig, TaskConfig
from eoforge.config.jobs import PlanInput, PlanSource, RunConfig, ScalingConfig, check_inputs
from eoforge.config.predict import PredictConfig
from eoforge.config.pretrain import PretrainConfig
from eoforge.config.sweep import SweepConfig
from eoforge.errors import ConfigError

KINDS: dict[str, type[Strict]] = {
    "data": DataConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "sweep": SweepConfig,
    "predict": PredictConfig,
}

__all__ = [
    "KINDS",
    "CatalogConfig",
    "ChipGridConfig",
    "DataConfig",
    "FinetuneConfig",
    "PairingConfig",
    "PlanInput",
    "PlanSource",
    "PredictConfig",
    "PretrainConfig",
    "RunConfig",
    "ScalingConfig",
    "SplitConfig",
    "Strict",
    "SweepConfig",
    "TaskConfig",
    "apply_overrides",
    "check_inputs",
    "expand_vars",
    "format_validation_error",
    "load_config",
    "load_raw",
    "parse_config",
]


def parse_config[C: Strict](raw: dict[str, Any], source: str, kind: type[C] | None = None) -> C:
    """Validate a raw dict as the model for its ``kind`` (or the given model)."""
    model: type[Strict]
    if kind is None:
        name = raw.get("kind")
        if name not in KINDS:
            raise ConfigError(f"{source}: kind: expected one of {sorted(KINDS)}, got {name!r}")
        model = KINDS[name]
    else:
        model = kind
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config[C: Strict](path: str | Path, kind: type[C] | None = None, overrides: list[str] | None = None) -> C:
    """Load, override and validate a YAML config file."""
    raw = apply_overrides(load_raw(path), overrides or [])
    return parse_config(raw, str(path), kind)
