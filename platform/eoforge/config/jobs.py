"""Sections shared by the job kinds (pretrain, finetune, sweep): plan input, Ray scaling, run identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator

from eoforge.config.base import (
    Fraction,
    NonNegInt,
    PathStr,
    PosFloat,
    PosInt,
    Strict,
    _expand_path,
    parse_cpu_list,
)
from eoforge.errors import ConfigError


class PlanInput(Strict):
    """A chip plan a job streams; ``plan`` is built from ``config`` when it does not exist."""

    plan: PathStr = Field(
        description="GeoParquet chip plan: a local path or a URI (s3://bucket/key.parquet, gs://...)."
    )
    config: PathStr | None = Field(None, description="kind: data config used to build the plan if missing.")
    normalize: Literal["ssl4eo", "none"] = Field(
        "ssl4eo", description="'ssl4eo': (x - mean) / std with SSL4EO-S12 constants; 'none': raw units."
    )
    min_valid_fraction: Fraction = Field(
        0.5, description="Chips whose valid (not nodata, not cloud) S2 pixel fraction is below this are skipped."
    )
    read_tasks: PosInt = Field(2, description="Parallel Ray Data chip-reading tasks.")
    read_cpus: PosFloat = Field(0.5, description="Logical CPUs per chip-reading task.")
    read_cpu_set: list[NonNegInt] | None = Field(
        None,
        description="CPUs the chip-reading processes run on while they read: a Linux CPU list ('2-15', "
        "'0,4-7') or a list of ids; keeps the readers apart from a trainer pinned elsewhere "
        "(docs/benchmarks.md, 'Readers on cores of their own'). Unset: wherever Ray runs them.",
    )

    _expand = field_validator("plan", "config", mode="before")(_expand_path)

    @field_validator("read_cpu_set", mode="before")
    @classmethod
    def _cpu_list(cls, value: Any) -> Any:
        """A CPU list string ('2-15') or list of ids, as sorted ids without repeats."""
        return value if value is None or not isinstance(value, str | list | tuple) else list(parse_cpu_list(value))


class PlanSource(PlanInput):
    """A plan plus the split a pretraining job streams."""

    split: Literal["train", "val", "test", "all"] = "train"
    shuffle_rows: PosInt = Field(
        512,
        description="Rows per shuffle chunk (one reading block, whole source tiles): a batch mixes about "
        "shuffle_rows / chips-per-tile tiles; a reading task holds one chunk of pixels (~115 KB per 64 px chip).",
    )
    mix_windows: PosInt = Field(
        4, description="Plan windows (1024 rows each, random places) one reading call shuffles together."
    )
    materialize: bool = Field(
        False,
        description="Decode the plan's chips once into Parquet files (<run.storage_path>/materialized) "
        "and read every epoch from them (no COG reads or resampling after the first "
        "pass): for plans that fit on disk (~125 KB per 64 px chip) trained for many epochs.",
    )


#: Resources named by their own fields (cpus_per_worker, use_gpu) or managed by Ray, never custom.
_RAY_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def check_custom_resources(resources: dict[str, float]) -> dict[str, float]:
    """``resources`` if it names only custom Ray resources (CPU and GPU have their own fields)."""
    builtin = sorted(set(resources) & _RAY_BUILTIN_RESOURCES)
    if builtin:
        raise ValueError(
            f"{builtin} are not custom resources: set cpus_per_worker / use_gpu instead "
            "(resources_per_worker names custom Ray resources, e.g. a node group's)"
        )
    return resources


class ScalingConfig(Strict):
    """Mirrors ray.train.ScalingConfig."""

    num_workers: PosInt = 2
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1.0
    resources_per_worker: dict[str, PosFloat] = Field(
        default_factory=dict,
        description="Custom Ray resources each worker needs besides its CPUs and GPU, e.g. {spot_gpu: 1} "
        "to keep the workers on the node group that advertises it (`ray start --resources`, KubeRay "
        "rayStartParams). Empty: any node with the CPUs and GPUs.",
    )

    _custom = field_validator("resources_per_worker")(check_custom_resources)


class RunConfig(Strict):
    """Mirrors ray.train.RunConfig: rerunning with the same (storage_path, name) resumes."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage_path: PathStr = Field(description="Local directory or s3:// URI for checkpoints.")
    max_failures: NonNegInt = Field(
        0,
        description="Worker or node failures a run survives: all workers restart from the last checkpoint "
        "(ray.train.FailureConfig). Cluster configs set it > 0: a lost (spot) node is then survived.",
    )

    _expand = field_validator("storage_path", mode="before")(_expand_path)


class HasPlanInput(Protocol):
    """Any config kind with a ``data`` plan section."""

    data: PlanInput


def check_inputs(cfg: HasPlanInput) -> None:
    """Checks that need the file system: the plan or the config that builds it must exist.

    Works for any config with a ``data: PlanSource`` section (pretrain, finetune). The plan may
    be in object storage (``s3://``, ``gs://``...): its bucket must exist and be readable with
    the environment's credentials; the data config is a local file.

    Raises:
        ConfigError: neither the plan nor its data config exists; the plan URI is unusable.
        ServiceError: the plan's bucket does not exist, access was refused, or the store is
            unreachable.
    """
    from eoforge.storage import file_exists

    if not file_exists(cfg.data.plan, "data.plan"):
        if cfg.data.config is None:
            raise ConfigError(f"data.plan: {cfg.data.plan} does not exist and data.config is not set")
        if not Path(cfg.data.config).is_file():
            raise ConfigError(f"data.config: {cfg.data.config} does not exist")
