"""``kind: pretrain``: a self-supervised pretraining job (plan, model, objective, loop, Ray, MLflow).

The ``objective`` section is chosen by ``objective.kind``; each kind has its own typed parameters
(:class:`DualSimCLRConfig`, :class:`MoCoV2Config`, ...). An unknown key for that kind is an error
naming it. This module imports only pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from eoforge.config.base import Fraction, NonNegInt, PosFloat, PosInt, Strict, check_tracking_uri
from eoforge.config.jobs import PlanSource, RunConfig, ScalingConfig

ObjectiveKind = Literal[
    "dual_simclr", "simclr", "mma", "moco_v2", "moco_v3", "byol", "barlow_twins", "vicreg", "decur", "mae"
]
Modality = Literal["s1", "s2"]


class ModelConfig(Strict):
    """Two backbones (one per sensor) plus the objective's heads."""

    backbone: str = Field(
        "resnet18",
        description="eoforge backbone name (`eoforge list backbones`: resnet18, resnet50, swin_t_dswin, vit_s16) "
        "or any timm model name; used for both sensors.",
    )
    proj_hidden_dim: PosInt | None = Field(None, description="Head hidden width (default: backbone width).")
    proj_dim: PosInt = Field(128, description="Projection output width.")
    img_size: PosInt | None = Field(None, description="Input size in pixels for ViT/Swin (default: the model's).")
    patch_size: PosInt | None = Field(None, description="ViT patch size in pixels (default: the model's).")
    pretrained: bool = Field(
        False,
        description="Load timm's 3-channel ImageNet weights and adapt the first layer to the band count "
        "(timm.models.adapt_input_conv: RGB kernels repeated ceil(C/3) times, truncated, scaled by 3/C). "
        "Needs the weights in the local Hugging Face cache or network access.",
    )
    spectral_adapter: PosInt | None = Field(
        None,
        description="Put a learned projection over the band axis (SpectralEarth-style spectral adapter) in front "
        "of each backbone, mapping the sensor's bands onto this many channels.",
    )
    sync_batchnorm: bool = Field(
        True, description="On CUDA with more than one worker, convert BatchNorm to SyncBatchNorm (CPU: ignored)."
    )


class AugmentConfig(Strict):
    """EO view augmentations (two views of one chip); no colour jitter on SAR."""

    crop_scale: tuple[Fraction, Fraction] = Field((0.4, 1.0), description="Random resized crop area range.")
    flip: bool = Field(True, description="Random horizontal and vertical flips.")
    rot90: bool = Field(True, description="Random multiples of 90 degree rotation.")
    band_dropout: Fraction = Field(0.1, description="Probability of zeroing each band of a view.")
    noise_std: Annotated[float, Field(ge=0)] = Field(0.05, description="Gaussian noise std (normalised units).")
    s2_jitter: Annotated[float, Field(ge=0, le=1)] = Field(
        0.2, description="S2 only: per-view brightness/contrast jitter amplitude (never applied to SAR)."
    )


class ObjectiveConfig(Strict):
    """The SSL objective (registered in eoforge.ssl); ``kind`` picks the subclass below."""

    kind: ObjectiveKind = "dual_simclr"
    by_kind: ClassVar[dict[str, type[ObjectiveConfig]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["kind"].default
        if cls is not ObjectiveConfig and isinstance(default, str):
            ObjectiveConfig.by_kind[default] = cls

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler: Any) -> Any:
        if cls is ObjectiveConfig and isinstance(data, dict):
            sub = ObjectiveConfig.by_kind.get(data.get("kind", "dual_simclr"))
            if sub is not None:
                return sub.model_validate(data)
        return handler(data)


class _Views(Strict):
    views: Literal["cross", "intra"] = Field(
        "cross", description="cross: S1 and S2 of a chip are the two views; intra: two augmented views per modality."
    )
    modalities: list[Modality] = Field(["s1", "s2"], min_length=1, description="Modalities trained in intra mode.")
    augment: AugmentConfig | None = Field(
        AugmentConfig(),
        description="intra: the views' augmentations; cross: one geometry for both sensors, radiometry per "
        "sensor (null: no augmentation of cross views).",
    )

    @model_validator(mode="after")
    def _intra_views_need_augmentation(self) -> _Views:
        if self.views == "intra" and self.augment is None:
            raise ValueError("views 'intra' compares two augmented views of a chip: augment cannot be null")
        return self


class DualSimCLRConfig(ObjectiveConfig):
    """Dual-SimCLR: NT-Xent over 2N, S1/S2 pair positive, negatives from both modalities."""

    kind: Literal["dual_simclr"] = "dual_simclr"
    temperature: PosFloat = 0.07
    augment: AugmentConfig | None = Field(
        AugmentConfig(),
        description="Views of the S1/S2 pair while training: one crop box, flip and rotation for both sensors, "
        "band dropout and noise per sensor, S2-only jitter (null: the raw pair).",
    )


class SimCLRConfig(ObjectiveConfig, _Views):
    """SimCLR on one modality at a time (two augmented views)."""

    kind: Literal["simclr"] = "simclr"
    views: Literal["intra"] = "intra"
    temperature: PosFloat = 0.1


class MMAConfig(ObjectiveConfig):
    """Multi-modal alignment: symmetric InfoNCE over max spatial cross-correlation of feature maps."""

    kind: Literal["mma"] = "mma"
    temperature: PosFloat = 0.1
    embed_dim: PosInt = Field(256, description="Channels of the 1x1-conv projected feature maps (E).")
    max_shift: NonNegInt = Field(1, description="Largest offset (feature-map cells) searched; 0 = aligned only.")


class MoCoV2Config(ObjectiveConfig, _Views):
    """MoCo v2: momentum key encoder and a queue of negatives."""

    kind: Literal["moco_v2"] = "moco_v2"
    temperature: PosFloat = 0.2
    queue_size: PosInt = 65536
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.999


class MoCoV3Config(ObjectiveConfig, _Views):
    """MoCo v3: momentum encoder, predictor, in-batch negatives from the global batch."""

    kind: Literal["moco_v3"] = "moco_v3"
    temperature: PosFloat = 0.2
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.99, description="Start; cosine schedule to 1.")
    pred_hidden_dim: PosInt = 4096


class BYOLConfig(ObjectiveConfig, _Views):
    """BYOL: online predictor regresses the EMA target's projection."""

    kind: Literal["byol"] = "byol"
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.99, description="Start; cosine schedule to 1.")
    pred_hidden_dim: PosInt = 4096


class BarlowTwinsConfig(ObjectiveConfig, _Views):
    """Barlow Twins: cross-correlation of the standardised embeddings pushed to the identity."""

    kind: Literal["barlow_twins"] = "barlow_twins"
    lambda_offdiag: PosFloat = 0.0051


class VICRegConfig(ObjectiveConfig, _Views):
    """VICReg: invariance + variance + covariance terms."""

    kind: Literal["vicreg"] = "vicreg"
    sim_weight: PosFloat = 25.0
    var_weight: PosFloat = 25.0
    cov_weight: PosFloat = 1.0
    eps: PosFloat = 1e-4


class DeCURConfig(ObjectiveConfig):
    """DeCUR: Barlow Twins within each modality plus a common/unique split across modalities."""

    kind: Literal["decur"] = "decur"
    lambda_offdiag: PosFloat = 0.0051
    common_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.875, description="Share of embedding dims that are common (K = round(D x fraction)); 7168/8192 in DeCUR."
    )
    augment: AugmentConfig = AugmentConfig()


class MAEConfig(ObjectiveConfig):
    """Masked autoencoder on ViT backbones, one per modality."""

    kind: Literal["mae"] = "mae"
    modalities: list[Modality] = Field(["s1", "s2"], min_length=1)
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.75
    norm_pix_loss: bool = True
    decoder_dim: PosInt = 256
    decoder_depth: PosInt = 2
    decoder_heads: PosInt = 8


class OptimConfig(Strict):
    """AdamW settings, LR schedule and gradient clipping."""

    lr: PosFloat = 3e-4
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    schedule: Literal["constant", "cosine"] = Field("constant", description="LR after warm-up (cosine to min_lr).")
    warmup_steps: NonNegInt = Field(0, description="Linear warm-up from 0 over this many optimiser steps.")
    min_lr: Annotated[float, Field(ge=0)] = 0.0
    grad_clip_norm: PosFloat | None = Field(None, description="Clip the global gradient norm to this value.")


class TrainConfig(Strict):
    """Loop length, checkpointing and device switches."""

    epochs: PosInt = 1
    batch_size: PosInt = Field(32, description="Per-worker batch size (chips).")
    max_steps: PosInt | None = Field(None, description="Stop after this many optimiser steps in total.")
    checkpoint_every_steps: PosInt = Field(20, description="Report a checkpoint every N steps and at the end.")
    log_every_steps: PosInt = 1
    seed: NonNegInt = 0
    grad_accum_steps: PosInt = Field(1, description="Micro-batches per optimiser step.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast on CUDA; CPU: ignored.")
    channels_last: bool = Field(False, description="channels_last memory format on CUDA; CPU: ignored.")
    compile: bool = Field(False, description="torch.compile the model on CUDA; CPU: ignored.")
    non_blocking: bool = Field(True, description="Pinned, non-blocking host-to-device copies on CUDA.")


class MlflowConfig(Strict):
    """Tracking server and model registry."""

    tracking_uri: str | None = Field(None, description="Default: $MLFLOW_TRACKING_URI, else the local stack's server.")
    experiment: str = "eoforge-pretrain"
    registered_model: str = Field("eoforge-dual-simclr", min_length=1)
    alias: str = Field("candidate", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    reuse: bool = Field(
        True,
        description="A version of registered_model pretrained with the same config on the same plan (hash) is "
        "reused (alias moved to it) instead of training again; false: always train.",
    )

    _check_tracking_uri = field_validator("tracking_uri")(check_tracking_uri)


class PretrainConfig(Strict):
    """``kind: pretrain``: a pretraining job."""

    kind: Literal["pretrain"]
    data: PlanSource
    model: ModelConfig = ModelConfig()
    objective: SerializeAsAny[ObjectiveConfig] = DualSimCLRConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()
    run: RunConfig
    mlflow: MlflowConfig = MlflowConfig()
