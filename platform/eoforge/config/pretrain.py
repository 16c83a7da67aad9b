"""``kind: pretrain``: a self-supervised pretraining job (plan, model, objective, loop, Ray, MLflow)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from eoforge.config.base import NonNegInt, PosFloat, PosInt, Strict
from eoforge.config.jobs import PlanSource, RunConfig, ScalingConfig


class ModelConfig(Strict):
    """Two timm backbones (one per sensor) plus projection heads."""

    backbone: str = Field("resnet18", description="timm model name, used for both sensors.")
    proj_hidden_dim: PosInt | None = Field(None, description="Head hidden width (default: backbone width).")
    proj_dim: PosInt = Field(128, description="Projection output width.")


class ObjectiveConfig(Strict):
    """The SSL objective (registered in eoforge.ssl)."""

    kind: Literal["dual_simclr"] = "dual_simclr"
    temperature: PosFloat = 0.07


class OptimConfig(Strict):
    """AdamW settings."""

    lr: PosFloat = 3e-4
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4


class TrainConfig(Strict):
    """Loop length and checkpointing."""

    epochs: PosInt = 1
    batch_size: PosInt = Field(32, description="Per-worker batch size (chips).")
    max_steps: PosInt | None = Field(None, description="Stop after this many optimiser steps in total.")
    checkpoint_every_steps: PosInt = Field(20, description="Report a checkpoint every N steps and at the end.")
    log_every_steps: PosInt = 1
    seed: NonNegInt = 0


class MlflowConfig(Strict):
    """Tracking server and model registry."""

    tracking_uri: str | None = Field(None, description="Default: $MLFLOW_TRACKING_URI, else the local stack's server.")
    experiment: str = "eoforge-pretrain"
    registered_model: str = Field("eoforge-dual-simclr", min_length=1)
    alias: str = Field("candidate", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")


class PretrainConfig(Strict):
    """``kind: pretrain``: a pretraining job."""

    kind: Literal["pretrain"]
    data: PlanSource
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()
    run: RunConfig
    mlflow: MlflowConfig = MlflowConfig()
