"""Typed configs: one pydantic model per YAML ``kind``.

A config is validated before any work starts. Errors name the field path and the
reason (``train.batch_size: Input should be greater than 0``) and are raised as
:class:`~eoforge.errors.ConfigError`; the CLI and ``jobs/`` turn them into exit code 2.

Path-valued fields may use ``${VAR}`` (expanded from the environment, e.g. ``${EOFORGE_HOME}``);
an unset variable is an error. Relative paths are resolved against the current directory
of the process that loads the config. This module imports only pydantic and yaml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eoforge.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_vars(value: str) -> str:
    """Expand ``${VAR}`` from the environment; raise ValueError naming an unset variable."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _VAR.sub(sub, value)


def _expand_path(value: Any) -> Any:
    if isinstance(value, str | Path):
        text = expand_vars(str(value))
        if "://" in text:  # URLs and object-store paths are kept as they are
            return text
        return str(Path(text).expanduser())
    return value


class Strict(BaseModel):
    """Base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
PathStr = Annotated[str, Field(min_length=1)]


# --------------------------------------------------------------------------- data / plan
class CatalogConfig(Strict):
    """Where items come from and how they are filtered."""

    backend: Literal["static", "stac_api"] = Field(
        description="'static': a STAC catalog on disk (catalog.json); 'stac_api': a STAC API URL."
    )
    url: PathStr = Field(description="catalog.json path / file:// URL, or the STAC API root URL.")
    provider: Literal["eoforge", "planetary_computer", "earth_search"] = Field(
        "eoforge", description="Asset-name profile of the catalog (see eoforge.catalog.providers)."
    )
    s2_collection: str = "sentinel-2-l2a"
    s1_collection: str = "sentinel-1-grd"
    label_collection: str | None = Field(None, description="Optional label collection (STAC label ext).")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="lon/lat bounding box (west, south, east, north), degrees."
    )
    datetime: str | None = Field(None, description="RFC 3339 interval, e.g. 2024-01-01/2024-12-31.")
    max_cloud_cover: Annotated[float, Field(ge=0, le=100)] = Field(
        100.0, description="Keep S2 items with eo:cloud_cover below this, percent."
    )
    page_size: PosInt = Field(100, description="STAC API page size (items per request).")
    max_items: PosInt | None = Field(None, description="Stop after this many items per collection.")

    _expand = field_validator("url", mode="before")(_expand_path)

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, v: tuple[float, float, float, float] | None) -> Any:
        if v is not None and not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError("bbox must be (west, south, east, north) with west < east and south < north")
        return v


class PairingConfig(Strict):
    """How S1 and S2 acquisitions are paired."""

    max_days: Annotated[float, Field(ge=0)] = Field(3.0, description="Largest |t_S1 - t_S2| of a pair, days.")
    min_overlap: Fraction = Field(0.5, description="Smallest intersection area / S2 footprint area of a pair.")
    one_s1_per_s2: bool = Field(True, description="Keep only the closest-in-time S1 item per S2 item.")


class ChipGridConfig(Strict):
    """The chip grid laid on each S2 item (chips are squares on the S2 item's UTM grid)."""

    size_px: PosInt = Field(64, description="Chip side in pixels at resolution_m.")
    stride_px: PosInt | None = Field(None, description="Step between chips in pixels (default: size_px).")
    resolution_m: PosFloat = Field(10.0, description="Output pixel size, metres.")


class SplitConfig(Strict):
    """Split fractions; chips at the same place always share a split (no leakage across dates)."""

    train: Fraction = 0.8
    val: Fraction = 0.1
    test: Fraction = 0.1

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class DataConfig(Strict):
    """``kind: data``: from a STAC catalog to a chip plan."""

    kind: Literal["data"]
    catalog: CatalogConfig
    pairing: PairingConfig = PairingConfig()
    chips: ChipGridConfig = ChipGridConfig()
    splits: SplitConfig = SplitConfig()
    seed: NonNegInt = 0


# --------------------------------------------------------------------------- pretrain
class PlanSource(Strict):
    """Which chip plan a job streams. ``plan`` is built from ``config`` when it does not exist."""

    plan: PathStr = Field(description="GeoParquet chip plan path.")
    config: PathStr | None = Field(None, description="kind: data config used to build the plan if missing.")
    split: Literal["train", "val", "test", "all"] = "train"
    normalize: Literal["ssl4eo", "none"] = Field(
        "ssl4eo", description="'ssl4eo': (x - mean) / std with SSL4EO-S12 constants; 'none': raw units."
    )
    min_valid_fraction: Fraction = Field(
        0.5, description="Chips whose valid (not nodata, not cloud) S2 pixel fraction is below this are skipped."
    )
    read_tasks: PosInt = Field(2, description="Parallel Ray Data chip-reading tasks.")
    read_cpus: PosFloat = Field(0.5, description="Logical CPUs per chip-reading task.")

    _expand = field_validator("plan", "config", mode="before")(_expand_path)


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


class ScalingConfig(Strict):
    """Mirrors ray.train.ScalingConfig."""

    num_workers: PosInt = 2
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1.0


class RunConfig(Strict):
    """Mirrors ray.train.RunConfig: rerunning with the same (storage_path, name) resumes."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage_path: PathStr = Field(description="Local directory or s3:// URI for checkpoints.")
    max_failures: NonNegInt = 0

    _expand = field_validator("storage_path", mode="before")(_expand_path)


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


KINDS: dict[str, type[Strict]] = {"data": DataConfig, "pretrain": PretrainConfig}
C = TypeVar("C", bound=Strict)


# --------------------------------------------------------------------------- loading
def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``<source>: <field.path>: <reason>``."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=16")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a dict, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping with a 'kind' key, got {type(raw).__name__}")
    return raw


def parse_config(raw: dict[str, Any], source: str, kind: type[C] | None = None) -> C:
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


def load_config(path: str | Path, kind: type[C] | None = None, overrides: list[str] | None = None) -> C:
    """Load, override and validate a YAML config file."""
    raw = apply_overrides(load_raw(path), overrides or [])
    return parse_config(raw, str(path), kind)


def check_inputs(cfg: PretrainConfig) -> None:
    """Checks that need the file system: the plan or the config that builds it must exist."""
    if not Path(cfg.data.plan).exists():
        if cfg.data.config is None:
            raise ConfigError(f"data.plan: {cfg.data.plan} does not exist and data.config is not set")
        if not Path(cfg.data.config).is_file():
            raise ConfigError(f"data.config: {cfg.data.config} does not exist")
