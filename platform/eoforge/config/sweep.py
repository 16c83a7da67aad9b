"""``kind: sweep``: a Ray Tune experiment over fine-tuning runs.

The grid is backbone (named methods, e.g. ``ssl`` and ``scratch``) x label fraction x lr x
seed; every point is one ``kind: finetune`` job made from ``base`` with those values set.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from eoforge.config.base import NonNegInt, PathStr, PosFloat, PosInt, Strict, _expand_path, check_tracking_uri
from eoforge.config.jobs import check_custom_resources


class MethodConfig(Strict):
    """One line of the label-fraction plot: a backbone source and a mode."""

    source: str = Field(
        description="As finetune backbone.source: models:/..., a checkpoint, 'scratch' or 'band_stats'."
    )
    mode: Literal["linear_probe", "finetune", "lp_ft", "knn"] | None = Field(
        None,
        description="Default: the base config's mode. knn, and linear_probe on a whole-chip task (solved for each "
        "train.probe_c), have no lr: they run once, not per lr.",
    )
    objective: str | None = Field(
        None, description="The SSL objective the source was pretrained with (a column of the results table)."
    )


class SearchSpaceConfig(Strict):
    """The grid (and optional random lr search)."""

    methods: dict[str, MethodConfig] = Field(description="Method label -> backbone, e.g. {ssl: ..., scratch: ...}.")
    label_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field([0.01, 0.1, 0.5, 1.0], min_length=1)
    lr: list[PosFloat] | None = Field(None, description="Grid of learning rates (default: the base config's).")
    lr_loguniform: tuple[PosFloat, PosFloat] | None = Field(
        None, description="Sample lr log-uniformly in [low, high] instead of a grid; num_samples draws per point."
    )
    seeds: list[NonNegInt] = Field([0, 1, 2], min_length=1)
    num_samples: PosInt = Field(1, description="Samples per grid point (with lr_loguniform).")

    @model_validator(mode="after")
    def _one_lr_rule(self) -> SearchSpaceConfig:
        if self.lr is not None and self.lr_loguniform is not None:
            raise ValueError("give lr (a grid) or lr_loguniform (a search), not both")
        if self.lr_loguniform is not None and not self.lr_loguniform[0] < self.lr_loguniform[1]:
            raise ValueError("lr_loguniform: low must be < high")
        if not self.methods:
            raise ValueError("methods: at least one method")
        return self


class AshaConfig(Strict):
    """ASHA early stopping on the validation metric, per reported epoch."""

    enabled: bool = False
    grace_period: PosInt = 2
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0


class TrialResources(Strict):
    """What one trial takes; the cluster decides how many run at once."""

    num_workers: PosInt = Field(1, description="Ray Train workers per trial.")
    cpus_per_worker: PosFloat = 1.0
    use_gpu: bool = False
    resources_per_worker: dict[str, PosFloat] = Field(
        default_factory=dict,
        description="Custom Ray resources each Train worker needs (as a job's scaling.resources_per_worker).",
    )
    max_concurrent_trials: PosInt | None = Field(None, description="Cap on trials running at once (None: Ray's).")

    _custom = field_validator("resources_per_worker")(check_custom_resources)


class SweepRunConfig(Strict):
    """Experiment identity: rerunning with the same name and storage path resumes."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage_path: PathStr
    max_failures: NonNegInt = Field(1, description="Tune restarts of a failed trial.")

    _expand = field_validator("storage_path", mode="before")(_expand_path)


class SweepMlflowConfig(Strict):
    """Parent run, and where the champion is registered."""

    tracking_uri: str | None = None
    experiment: str = "eoforge-sweeps"
    registered_model: str | None = Field(None, description="Champion model name (default: <run.name>-<task>).")
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")

    _check_tracking_uri = field_validator("tracking_uri")(check_tracking_uri)


class SweepConfig(Strict):
    """``kind: sweep``."""

    kind: Literal["sweep"]
    base: PathStr | dict[str, Any] = Field(description="A kind: finetune config: a file path or the mapping.")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides applied to base (dotted keys).")
    search: SearchSpaceConfig
    asha: AshaConfig = AshaConfig()
    resources: TrialResources = TrialResources()
    run: SweepRunConfig
    mlflow: SweepMlflowConfig = SweepMlflowConfig()
