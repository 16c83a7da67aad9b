"""Objective registry: config ``objective.kind`` -> loss module factory."""

from __future__ import annotations

from collections.abc import Callable
from difflib import get_close_matches

from torch import nn

from eoforge.errors import ConfigError
from eoforge.ssl.dual_simclr import DualSimCLRLoss

_OBJECTIVES: dict[str, Callable[..., nn.Module]] = {}


def register_objective(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a loss factory under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _OBJECTIVES[name] = fn
        return fn

    return deco


@register_objective("dual_simclr")
def _dual_simclr(temperature: float = 0.07) -> nn.Module:
    return DualSimCLRLoss(temperature)


def build_objective(kind: str, **kwargs: float) -> nn.Module:
    """Instantiate the objective ``kind`` with its hyperparameters."""
    if kind not in _OBJECTIVES:
        close = get_close_matches(kind, _OBJECTIVES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"objective.kind: unknown {kind!r}; registered: {sorted(_OBJECTIVES)}{hint}")
    return _OBJECTIVES[kind](**kwargs)
