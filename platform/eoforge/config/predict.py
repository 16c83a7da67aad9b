"""``kind: predict``: maps and embeddings over an area from a registered model, as COGs + STAC.

The area is searched and paired by the same catalog code as ``eoforge plan`` (``catalog``,
``aoi``, ``pairing``); the job plans overlapping windows on each S2 item's own grid, streams
them through the model and writes output tiles aligned to that grid.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from eoforge.config.base import (
    NonNegInt,
    PathStr,
    PosInt,
    Strict,
    _expand_path,
    check_bbox,
    check_datetime,
    check_tracking_uri,
)
from eoforge.config.data import CatalogConfig, PairingConfig

PRODUCTS = ("classes", "probabilities", "embeddings")


class AoiConfig(Strict):
    """Where and when: a bbox or a GeoJSON file (lon/lat), a datetime range, or S2 item ids."""

    bbox: tuple[float, float, float, float] | None = Field(
        None, description="lon/lat bounding box (west, south, east, north), degrees."
    )
    geojson: PathStr | None = Field(
        None, description="A GeoJSON file: a geometry, a Feature or a FeatureCollection (their union), lon/lat."
    )
    datetime: str | None = Field(None, description="RFC 3339 interval, e.g. 2024-06-01/2024-06-30.")
    item_ids: list[str] | None = Field(
        None, description="Map only these S2 items (their S1 partners are paired as usual).", min_length=1
    )

    _expand = field_validator("geojson", mode="before")(_expand_path)

    _check_bbox = field_validator("bbox")(check_bbox)
    _check_datetime = field_validator("datetime")(check_datetime)

    @model_validator(mode="after")
    def _something(self) -> AoiConfig:
        if self.bbox is None and self.geojson is None and not self.item_ids:
            raise ValueError("give bbox, geojson or item_ids")
        return self


class InferenceConfig(Strict):
    """The actor pool that runs the model (one model copy per actor)."""

    actors: PosInt = Field(1, description="Inference actors (one per GPU on a GPU cluster).")
    use_gpu: bool = Field(False, description="One GPU per actor; CPU otherwise.")
    cpus_per_actor: Annotated[float, Field(gt=0)] = 1.0
    batch_size: PosInt = Field(64, description="Windows per forward pass.")
    read_tasks: PosInt = Field(2, description="Parallel Ray Data reading tasks (tile-aware reader).")
    read_cpus: Annotated[float, Field(gt=0)] = Field(0.5, description="Logical CPUs per reading task.")
    inflight_mb: PosInt | None = Field(
        None,
        description="Ray object-store budget (MiB) of the job's window blocks: reading runs at most this far "
        "ahead of inference. Default 64 MiB (about two 256-window blocks of 64 px) per reading and inference actor.",
    )

    def inflight_bytes(self) -> int:
        """The object-store budget of the stream, bytes (``inflight_mb`` or its default)."""
        mb = self.inflight_mb if self.inflight_mb is not None else 64 * (self.read_tasks + self.actors)
        return mb << 20


class EmbeddingsConfig(Strict):
    """How the ``embeddings`` product samples the backbone's features."""

    mode: Literal["patch", "pixel"] = Field(
        "patch",
        description="patch: one pooled vector per window, on a grid of stride x 10 m pixels; pixel: the "
        "backbone's last feature map upsampled bilinearly to each window and blended over the windows "
        "(like segmentation) at 10 m. Both write the per-window vectors to GeoParquet.",
    )


class PredictRun(Strict):
    """Run identity: the MLflow run name (a rerun with the same name and output resumes)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PredictMlflow(Strict):
    """Where the predict run is recorded."""

    experiment: str = "eoforge-predict"
    tracking_uri: str | None = None

    _check_tracking_uri = field_validator("tracking_uri")(check_tracking_uri)


class PredictConfig(Strict):
    """``kind: predict``."""

    kind: Literal["predict"]
    model: str | None = Field(
        None,
        description="Task model for classes / probabilities: models:/NAME@ALIAS, models:/NAME/VERSION "
        "(aliases are pinned to their version when the job starts), or a saved model folder "
        "(weights.safetensors + card.json; local, s3:// or gs://).",
    )
    embedding_model: str | None = Field(
        None,
        description="Backbone for embeddings (a registered pretraining model, or a saved model folder); "
        "default: the task model's.",
    )
    products: list[Literal["classes", "probabilities", "embeddings"]] = Field(
        default_factory=lambda: ["classes"], min_length=1
    )
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    catalog: CatalogConfig
    aoi: AoiConfig
    pairing: PairingConfig = PairingConfig()
    window_px: PosInt | None = Field(
        None, description="Model input side in 10 m pixels (default: the model card's chip size, else 64)."
    )
    overlap_px: NonNegInt = Field(
        16, description="Overlap of neighbouring windows, pixels (stride = window_px - overlap_px)."
    )
    blend: Literal["hann", "cosine", "none"] = Field(
        "hann",
        description="Segmentation: weight of a window's pixels when overlapping windows are averaged "
        "(hann / cosine taper to the window's edge; none: plain mean). Per-window outputs take the centre.",
    )
    tile_px: PosInt = Field(2048, description="Output tile side, pixels at 10 m, aligned to the S2 item's grid.")
    min_valid_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.05, description="Windows with less valid input (smaller sensor share) give nodata, not a guess."
    )
    inference: InferenceConfig = InferenceConfig()
    output: PathStr = Field(description="Folder or s3:// / gs:// prefix for the COGs and the STAC collection.")
    collection_id: str = Field("eoforge-predictions", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    run: PredictRun
    mlflow: PredictMlflow = PredictMlflow()

    _expand = field_validator("output", mode="before")(_expand_path)

    @field_validator("model", "embedding_model", mode="before")
    @classmethod
    def _model_path(cls, v: object) -> object:
        # a folder path is expanded (${VAR}, ~) and must embed no credentials; registry URIs pass as given
        if isinstance(v, str) and not v.startswith("models:/"):
            return _expand_path(v)
        return v

    @model_validator(mode="after")
    def _models_for_products(self) -> PredictConfig:
        task_products = {"classes", "probabilities"} & set(self.products)
        if task_products and not self.model:
            raise ValueError(f"products {sorted(task_products)} need `model` (a fine-tuned task model)")
        if "embeddings" in self.products and not (self.embedding_model or self.model):
            raise ValueError("product 'embeddings' needs `embedding_model` or `model`")
        if len(set(self.products)) != len(self.products):
            raise ValueError(f"products: listed twice: {self.products}")
        if self.window_px is not None and self.overlap_px * 2 > self.window_px:
            raise ValueError(f"overlap_px {self.overlap_px} must be at most half of window_px {self.window_px}")
        return self
