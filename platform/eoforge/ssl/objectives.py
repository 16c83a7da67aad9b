"""Objective registry: config ``objective.kind`` -> :class:`~eoforge.ssl.base.Objective` subclass.

Each objective module registers itself with ``@register_objective`` when imported; this module
imports them explicitly (no plug-in scan), builds one from a validated config and lists them.
"""

from __future__ import annotations

from difflib import get_close_matches

from eoforge.config.pretrain import ModelConfig, ObjectiveConfig
from eoforge.errors import ConfigError
from eoforge.ssl import (  # noqa: F401  (imported to register)
    barlow_twins,
    byol,
    decur,
    dual_simclr,
    mae,
    mma,
    moco_v2,
    moco_v3,
    simclr,
    vicreg,
)
from eoforge.ssl.base import _OBJECTIVES, Objective, register_objective

__all__ = ["build_objective", "list_objectives", "objective_class", "register_objective"]


def objective_class(kind: str) -> type[Objective]:
    """The class registered under ``kind``; ConfigError listing the names (and the closest) otherwise."""
    if kind not in _OBJECTIVES:
        close = get_close_matches(kind, _OBJECTIVES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"objective.kind: unknown {kind!r}; registered: {sorted(_OBJECTIVES)}{hint}")
    return _OBJECTIVES[kind]


def build_objective(cfg: ObjectiveConfig, model_cfg: ModelConfig | None = None) -> Objective:
    """Instantiate the objective of ``cfg.kind`` with its backbones and heads."""
    return objective_class(cfg.kind)(cfg, model_cfg or ModelConfig())


def list_objectives() -> list[tuple[str, str]]:
    """(name, one-line description) of every registered objective, by name."""
    return [(k, _OBJECTIVES[k].description) for k in sorted(_OBJECTIVES)]
