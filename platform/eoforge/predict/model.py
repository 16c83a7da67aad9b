"""Which models a predict job runs, checked against their cards, and the actor that runs them.

:func:`resolve_models` pins every ``models:/NAME@ALIAS`` to its version once, on the driver (a
saved model folder to its weights' SHA-256, :mod:`eoforge.predict.saved_model`), and refuses a
model whose card names other bands or a normalisation the reader cannot give, before any pixel
is read. :func:`share_weights` puts each model's weights into Ray's object store once (a folder read
by the driver, a registered version downloaded by one Ray task).
:class:`WindowPredictor` is the Ray Data actor: one copy of the models per actor, built
from those bytes (an actor neither talks to MLflow nor reads the model folder), on the actor's GPU
when it has one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.data.normalize import NORMALIZATIONS
from eoforge.errors import ConfigError
from eoforge.redact import redact

#: Default window side when neither the config nor the card gives one, pixels.
DEFAULT_WINDOW_PX = 64


@dataclass(frozen=True)
class ModelRef:
    """A pinned model and its card: a registered version, or a saved model folder.

    Attributes:
        uri: ``models:/NAME/VERSION`` (an alias resolved when the job started), or the folder's
            location, redacted (:mod:`eoforge.predict.saved_model`).
        asked: what the config said (``models:/NAME@champion``), redacted.
        name, version: registry coordinates; for a folder its name and ``sha256:<12 hex>``.
        card: the model card (bands, normalisation, task, classes, ...).
        path: the saved model folder as given (None for a registered version); the driver reads it for the actors.
        sha256: hex SHA-256 of a folder's ``weights.safetensors`` (None for a registered version).
    """

    uri: str
    asked: str
    name: str
    version: str
    card: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None

    @property
    def task(self) -> str | None:
        """``classification`` / ``multilabel`` / ``segmentation``, or None for a backbone."""
        return self.card.get("task")

    @property
    def registered(self) -> bool:
        """A version of the registry (not a saved model folder)."""
        return self.path is None


@dataclass(frozen=True)
class PredictModels:
    """What the actors load: the task model and the embedding backbone (either may be None)."""

    task: ModelRef | None
    embedding: ModelRef | None
    normalize: str
    window_px: int
    embedding_mode: str = "patch"

    @property
    def refs(self) -> list[ModelRef]:
        """The distinct models (one when the task model also gives the embeddings)."""
        out = [r for r in (self.task, self.embedding) if r is not None]
        return out[:1] if len(out) == 2 and out[0].uri == out[1].uri else out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (crosses into Ray actors)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictModels:
        """Inverse of :meth:`to_dict`."""
        refs = {k: (ModelRef(**d[k]) if d[k] else None) for k in ("task", "embedding")}
        return cls(
            refs["task"], refs["embedding"], d["normalize"], int(d["window_px"]), d.get("embedding_mode", "patch")
        )


def check_card_fits_reader(ref: ModelRef) -> None:
    """Refuse a model whose card names bands or a normalisation the plan's reader does not give.

    Raises:
        ConfigError: naming the model, what its card says and what the reader gives.
    """
    card, problems = ref.card, []
    for key, bands in (("s1_bands", S1_BAND_NAMES), ("s2_bands", S2_BAND_NAMES)):
        if key not in card:
            problems.append(f"its card has no {key}")
        elif list(card[key]) != list(bands):
            problems.append(f"{key} {list(card[key])} != the reader's {list(bands)}")
    if card.get("normalize", "ssl4eo") not in NORMALIZATIONS:
        problems.append(f"normalisation {card.get('normalize')!r} is not one of {NORMALIZATIONS}")
    if problems:
        raise ConfigError(f"model {ref.asked} ({ref.uri}) does not fit the predict input: {'; '.join(problems)}")


def _pin_saved(asked: str) -> ModelRef:
    """A saved model folder (weights + card), its weights hashed and checked to rebuild, before any read."""
    from pathlib import PurePosixPath

    from eoforge.predict.saved_model import model_location, module_of, read_saved_model, weights_sha256

    card, data, shown = read_saved_model(asked)
    module_of(shown, data, card)  # the weights fit the card's architecture: refused here, not in the actors
    digest = weights_sha256(data)
    where = model_location(asked)  # absolute: the lineage names the folder whatever the working directory
    ref = ModelRef(
        shown, redact(asked), PurePosixPath(shown).name, f"sha256:{digest[:12]}", card, path=where, sha256=digest
    )
    check_card_fits_reader(ref)
    return ref


def _pin(tracking_uri: str, asked: str) -> ModelRef:
    from eoforge.tracking.registry import model_card, resolve_model_version

    if not asked.startswith("models:/"):
        return _pin_saved(asked)
    mv = resolve_model_version(tracking_uri, asked)
    ref = ModelRef(
        f"models:/{mv.name}/{mv.version}",
        asked,
        mv.name,
        str(mv.version),
        model_card(tracking_uri, mv.name, mv.version),
    )
    check_card_fits_reader(ref)
    return ref


def resolve_models(
    tracking_uri: str,
    model: str | None,
    embedding_model: str | None,
    products: list[str],
    window_px: int | None,
    embedding_mode: str = "patch",
) -> PredictModels:
    """Pin and check the models of a predict config (see module docstring).

    Raises:
        ServiceError: no such model, alias or version (the message lists what the registry has).
        ConfigError: a card does not fit the input; the task model has no task; the two models
            disagree on normalisation; no such model folder.
        UnsafeArtifactError: a model folder is not weights + card (e.g. a pickled checkpoint), or
            its weights do not rebuild the card's architecture.
    """
    task = _pin(tracking_uri, model) if model else None
    if task is not None and task.task not in ("classification", "multilabel", "segmentation"):
        raise ConfigError(f"model {model}: its card names no task ({task.task!r}); classes need a fine-tuned model")
    if task is not None and task.card.get("mode") == "knn":
        raise ConfigError(
            f"model {model} ({task.uri}) is a kNN arm: it keeps no classifier to run; use another version"
        )
    embedding = None
    if "embeddings" in products:
        embedding = _pin(tracking_uri, embedding_model) if embedding_model else task
        if embedding is not None and embedding_mode == "pixel":
            check_feature_maps(embedding)
    norms = {r.card.get("normalize", "ssl4eo") for r in (task, embedding) if r is not None}
    if len(norms) > 1:
        raise ConfigError(f"the task and embedding models were trained on different normalisations: {sorted(norms)}")
    card_px = next((int(r.card["chip_px"]) for r in (task, embedding) if r is not None and r.card.get("chip_px")), None)
    return PredictModels(task, embedding, norms.pop(), window_px or card_px or DEFAULT_WINDOW_PX, embedding_mode)


def check_feature_maps(ref: ModelRef) -> None:
    """Refuse per-pixel embeddings from a model without spatial feature maps (e.g. the band-statistics baseline).

    Raises:
        ConfigError: the card's architecture is not a two-sensor timm backbone (alone or under a task head).
    """
    arch = ref.card.get("architecture") or {}
    inner = arch.get("backbone") if arch.get("kind") == "finetune" else arch
    if not isinstance(inner, dict) or inner.get("kind") != "dual_backbone":
        kind = inner.get("kind") if isinstance(inner, dict) else None
        raise ConfigError(
            f"embeddings.mode pixel: model {ref.asked} ({ref.uri}) has no feature maps to upsample "
            f"(its backbone is {kind!r}, not a dual_backbone); use embeddings.mode patch"
        )


def _features(model: Any, s1: Any, s2: Any) -> Any:
    """Pooled backbone features (B, D) of a registered backbone or of a fine-tuned model's backbone."""
    backbone = getattr(model, "backbone", model)
    return backbone(s1, s2)


def _feature_maps(model: Any, s1: Any, s2: Any) -> Any:
    """Per-pixel backbone features (B, D, H, W): each sensor's last feature map, upsampled bilinearly to the input.

    D is the pooled vector's width (S1 then S2 channels, as :func:`_features` concatenates them).
    """
    import torch
    import torch.nn.functional as F

    backbone = getattr(model, "backbone", model)
    maps = []
    for modality, x in (("s1", s1), ("s2", s2)):
        fmap = backbone.encoder(modality).forward_intermediates(backbone.adapt(modality, x), intermediates_only=True)
        maps.append(F.interpolate(fmap[-1].float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False))
    return torch.cat(maps, dim=1)


def share_weights(spec: PredictModels, tracking_uri: str) -> dict[str, Any]:
    """Each distinct model's (weights bytes, card), read once and put in Ray's object store.

    A saved folder is read here, on the driver (its filesystem and credentials are the driver's); a
    registered version is downloaded by one Ray task.

    Returns:
        ``{ref.uri: ObjectRef}`` for :class:`WindowPredictor`. The actors then import neither MLflow
        nor the storage clients and need no tracking credentials (the one download task does), and N
        actors cost one download.

    Raises:
        UnsafeArtifactError: a registered version is not weights + card (checked here, before the
            download); a folder's weights are no longer the bytes :func:`resolve_models` pinned.
    """
    import ray

    from eoforge.predict.saved_model import read_pinned_weights
    from eoforge.tracking.registry import check_weights_only

    out: dict[str, Any] = {}
    for ref in (spec.task, spec.embedding):
        if ref is None or ref.uri in out:
            continue
        if ref.path is not None and ref.sha256 is not None:
            card, data, _ = read_pinned_weights(ref.path, ref.sha256)
            out[ref.uri] = ray.put((data, card))
            del data
        else:
            check_weights_only(ref.uri, tracking_uri)  # a pickled version is refused here, not in the actors
            # one task downloads while the actors import torch; its worker, not the driver, writes the
            # ~100 MB into the object store (the driver's RSS would keep those pages: docs/benchmarks.md).
            # num_cpus=0: the actors that wait for it hold the CPUs.
            out[ref.uri] = ray.remote(num_cpus=0)(_download).remote(ref.uri, tracking_uri)
    return out


def _download(uri: str, tracking_uri: str) -> tuple[bytes, dict[str, Any]]:
    """Ray task of :func:`share_weights`: a registered version's (weights bytes, card)."""
    from eoforge.tracking.registry import download_weight_bytes

    return download_weight_bytes(uri, tracking_uri)


class WindowPredictor:
    """Ray Data actor: window blocks in storage units -> model outputs per window.

    In: ``s2`` uint16 [B, 12, H, W], ``s1`` float16 [B, 2, H, W], ``valid`` bool [B, 2, H, W], ``ok`` [B].
    Out (besides the block's metadata columns): ``valid_any`` bool [B, H, W] (a sensor is valid there),
    ``probs`` float16 [B, K] (per-window tasks) or
    [B, K, H, W] (segmentation); ``embedding`` float32 [B, D]; with ``embedding_mode`` pixel also
    ``embedding_map`` float16 [B, D, H, W]. Windows with ``ok`` False get zeros.
    """

    def __init__(self, models: dict[str, Any], weights: dict[str, Any]) -> None:
        """``models``: :meth:`PredictModels.to_dict`; ``weights``: :func:`share_weights` of them."""
        import ray
        import torch

        from eoforge.predict.saved_model import module_of

        self.spec = PredictModels.from_dict(models)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        loaded: dict[str, Any] = {}
        for ref in (self.spec.task, self.spec.embedding):
            if ref is not None and ref.uri not in loaded:
                data, card = ray.get(weights[ref.uri])
                loaded[ref.uri] = module_of(ref.uri, data, card).to(self.device).eval()
        self.task = loaded[self.spec.task.uri] if self.spec.task else None
        self.embedding = loaded[self.spec.embedding.uri] if self.spec.embedding else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the models on one block (see class docstring)."""
        import torch

        from eoforge.data.normalize import normalize_batch

        out = {k: v for k, v in batch.items() if k not in ("s1", "s2", "valid")}
        out["valid_any"] = batch["valid"].any(axis=1)  # [B, H, W]: some sensor the models read is valid
        s2, s1 = normalize_batch(
            torch.from_numpy(batch["s2"].astype(np.int32)).to(self.device),
            torch.from_numpy(batch["s1"]).to(self.device),
            torch.from_numpy(batch["valid"]).to(self.device),
            self.spec.normalize,
        )
        ok = torch.from_numpy(batch["ok"]).to(self.device)
        with torch.inference_mode():
            if self.task is not None:
                logits = self.task(s1, s2).float()
                kind = self.spec.task.task if self.spec.task else None
                probs = torch.sigmoid(logits) if kind == "multilabel" else torch.softmax(logits, dim=1)
                probs = probs * ok.view(-1, *([1] * (probs.dim() - 1)))
                out["probs"] = probs.to(torch.float16).cpu().numpy()
            if self.embedding is not None:
                emb = _features(self.embedding, s1, s2).float() * ok.view(-1, 1)
                out["embedding"] = emb.cpu().numpy()
                if self.spec.embedding_mode == "pixel":
                    fmap = _feature_maps(self.embedding, s1, s2) * ok.view(-1, 1, 1, 1)
                    out["embedding_map"] = fmap.to(torch.float16).cpu().numpy()
        return out
