"""``kind: finetune``: one fine-tuning (or linear-probe) job on a labelled chip plan.

Train on the plan's ``train`` split (a label fraction of it), select on ``val``, report on
``test``; the splits are by place, as the planner made them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from eoforge.config.base import Fraction, NonNegInt, PosFloat, PosInt, Strict, check_tracking_uri
from eoforge.config.jobs import PlanInput, RunConfig, ScalingConfig

#: Class sets by name (see eoforge.finetune.tasks for the lists and their sources).
CLASS_SETS = ("dfc8", "bigearthnet43", "bigearthnet19")


class TaskConfig(Strict):
    """What is predicted from a chip, and from which labels."""

    kind: Literal["classification", "multilabel", "segmentation"] = Field(
        description="'classification': the chip's majority class; 'multilabel': every class covering at least "
        "min_class_fraction of the chip (or the item's own label list); 'segmentation': per pixel."
    )
    classes: Literal["dfc8", "bigearthnet43", "bigearthnet19"] | list[str] = Field(
        "dfc8", description="A named class set or the class names in label-id order."
    )
    label_source: Literal["raster", "item"] = Field(
        "raster",
        description="'raster': the plan's per-pixel label COG (class id = index in classes, ignore_index "
        "unlabelled); 'item': the plan's item_labels list (class names), multilabel only.",
    )
    ignore_index: Annotated[int, Field(ge=0, le=255)] = 255
    label_map: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(
        None,
        description="Raster labels only: class id = label_map[raster value]; values past its end, and entries "
        "equal to ignore_index, are ignored. E.g. DFC2020's 1..10 onto dfc8: [255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7].",
        max_length=256,
    )
    min_class_fraction: Fraction = Field(0.1, description="Multilabel: smallest share of a class in a chip.")
    min_labelled_fraction: Fraction = Field(
        0.5, description="Chips whose labelled (not ignore_index) pixel share is below this are left out."
    )

    @model_validator(mode="after")
    def _item_labels_are_multilabel(self) -> TaskConfig:
        if self.label_source == "item" and self.kind != "multilabel":
            raise ValueError("label_source 'item' (a list of class names per chip) only serves kind 'multilabel'")
        if self.label_map is not None and self.label_source != "raster":
            raise ValueError("label_map remaps raster label values; it has no meaning with label_source 'item'")
        return self


class BackboneConfig(Strict):
    """Where the backbone's starting weights come from."""

    source: str = Field(
        "scratch",
        description="'models:/NAME@ALIAS' or 'models:/NAME/VERSION' (MLflow registry), a checkpoint directory "
        "or state.pt of a pretraining run, 'scratch' (random init: the supervised baseline; with "
        "mode linear_probe, the random-feature control), or 'band_stats' (each band's chip mean and std: "
        "the spectral control, no learned features).",
    )
    name: str = Field("resnet18", description="timm model for 'scratch'; must match the card otherwise.")

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str) -> str:
        if v.startswith("models:/"):
            spec = v.removeprefix("models:/")
            if not ("@" in spec or "/" in spec) or spec.startswith(("@", "/")) or spec.endswith(("@", "/")):
                raise ValueError(f"{v!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return v


class LabelSubsetConfig(Strict):
    """Which share of the train split's labelled chips is used."""

    fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Label fraction in (0, 1]; stratified, seeded and nested (see finetune.fractions)."
    )
    seed: NonNegInt = Field(0, description="Subset seed: same seed, same chips, whatever the method.")


class FinetuneOptimConfig(Strict):
    """AdamW for the head, and for the backbone in full fine-tuning."""

    lr: PosFloat = 1e-3
    backbone_lr_scale: PosFloat = Field(
        0.1,
        description="Fine-tuning a pretrained backbone: backbone lr = lr * backbone_lr_scale (1.0 = one lr for "
        "all). A backbone from scratch always trains at lr.",
    )
    lp_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="mode lp_ft: share of the epochs in which only the head trains (then everything)."
    )
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    schedule: Literal["constant", "cosine"] = Field(
        "cosine",
        description="Every group's lr over the run's optimiser steps (epochs x batches per epoch): 'cosine' "
        "decays from its lr to 0 at the last step (the fine-tuning schedule of SSL4EO-S12 and MAE), so the "
        "run ends settled whatever its step budget; 'constant' keeps it.",
    )
    warmup_steps: NonNegInt = Field(0, description="Linear warm-up from 0 over this many optimiser steps.")


class FinetuneTrainConfig(Strict):
    """Loop length and evaluation."""

    epochs: PosInt = 10
    steps: PosInt | None = Field(
        None,
        description="Optimiser steps in all (overrides epochs): the same budget for every arm and label "
        "fraction, so a 1 % subset trains as many steps as 100 % (epochs = ceil(steps / batches per epoch)).",
    )
    evals: PosInt = Field(10, description="With steps: evaluations on val over the run (sets eval_every_epochs).")
    batch_size: PosInt = Field(32, description="Per-worker batch size (chips).")
    eval_every_epochs: PosInt = Field(1, description="Evaluate on val (and report to Tune) every N epochs.")
    checkpoint_every_evals: PosInt = Field(
        2,
        description="A checkpoint (weights, optimiser, the best-on-val weights so far) with every Nth evaluation, "
        "besides the final one: a job or sweep trial that loses a worker or its node resumes from it "
        "(run.max_failures, sweep run.max_failures). The latest is the one kept in storage.",
    )
    seed: NonNegInt = Field(0, description="Weight init and shuffling seed.")
    augment: bool = Field(
        True,
        description="Random flips and 90-degree rotations of each training chip (sensors, validity and labels "
        "alike; eoforge.finetune.policy). Trained arms only: probes use features computed once.",
    )
    knn_k: list[PosInt] = Field(
        [1, 5, 10, 20], min_length=1, description="mode knn: neighbour counts tried; the best on val is reported."
    )
    probe_c: list[PosFloat] = Field(
        [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
        min_length=1,
        description="mode linear_probe (whole-chip tasks): inverse L2 strengths of the logistic-regression probe, "
        "each solved to convergence on the standardised train features; the best on val is reported. The probe "
        "has no learning rate or step budget.",
    )


class FinetuneMlflowConfig(Strict):
    """Where the run goes, and whether the result is registered."""

    tracking_uri: str | None = None
    experiment: str = "eoforge-finetune"
    registered_model: str | None = Field(
        None, description="Register the fine-tuned model under this name (None: log the run only)."
    )
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")

    _check_tracking_uri = field_validator("tracking_uri")(check_tracking_uri)


class FinetuneConfig(Strict):
    """``kind: finetune``."""

    kind: Literal["finetune"]
    data: PlanInput
    task: TaskConfig
    backbone: BackboneConfig = BackboneConfig()
    mode: Literal["linear_probe", "finetune", "lp_ft", "knn"] = Field(
        "finetune",
        description="'linear_probe': frozen backbone, a linear head on its standardised features trains; "
        "'finetune': everything trains; 'lp_ft': the head alone first (optim.lp_fraction of the epochs), then "
        "everything (Kumar et al. 2022); 'knn': no training, k nearest train chips in feature space (cosine).",
    )
    labels: LabelSubsetConfig = LabelSubsetConfig()
    optim: FinetuneOptimConfig = FinetuneOptimConfig()
    train: FinetuneTrainConfig = FinetuneTrainConfig()
    scaling: ScalingConfig = ScalingConfig(num_workers=1)
    run: RunConfig
    mlflow: FinetuneMlflowConfig = FinetuneMlflowConfig()
    materialize: bool = Field(
        True,
        description="Each worker reads the label subset and its share of val/test from the chip cache once and "
        "holds them for all epochs (false: Ray Data streams them from the cache every epoch, for sets larger "
        "than a worker's memory).",
    )
    cache_dir: str | None = Field(
        None, description="Where decoded labelled chips are kept between jobs (default: <storage_path>/chip-cache)."
    )

    @model_validator(mode="after")
    def _arm_fits_task(self) -> FinetuneConfig:
        if self.mode == "knn" and self.task.kind == "segmentation":
            raise ValueError("mode 'knn' classifies whole chips; segmentation needs linear_probe or finetune")
        if self.backbone.source == "band_stats":
            if self.task.kind == "segmentation":
                raise ValueError("backbone.source 'band_stats' gives one vector per chip; it cannot segment")
            if self.mode in ("finetune", "lp_ft"):
                raise ValueError("backbone.source 'band_stats' has nothing to fine-tune: use linear_probe or knn")
        return self

    @property
    def metric(self) -> str:
        """The validation metric that selects models (higher is better)."""
        return {"classification": "val/aa", "multilabel": "val/map", "segmentation": "val/miou"}[self.task.kind]
