"""Small models with known outputs for the predict tests, registered in a real MLflow registry.

They are eoforge's own :class:`~eoforge.models.pixel_linear.PixelLinear` with weights set by
hand, registered as weights + card like every model, so Ray's inference actors rebuild them
from the card (nothing from the tests package is imported or unpickled there).
"""

from __future__ import annotations

from typing import Any

import torch
from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.models.pixel_linear import PixelLinear
from torch import nn

#: 10 m S2 bands (B02, B03, B04, B08): their pixels are the same in every window that covers them.
TEN_M = [S2_BAND_NAMES.index(b) for b in ("B02", "B03", "B04", "B08")]


def pixel_segmenter(classes: int) -> PixelLinear:
    """Segmentation logits from each pixel alone: a fixed map of the 10 m bands and VV (other bands weigh 0).

    ``forward(s1, s2)``: s1 (B, 2, H, W), s2 (B, 12, H, W) -> (B, K, H, W). The output at a pixel
    depends only on that pixel, so every window that covers it agrees: a seam would show.
    """
    model = PixelLinear(classes)
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(classes, len(TEN_M) + 1, generator=g) * 2
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        s2_columns = [len(S1_BAND_NAMES) + i for i in TEN_M]
        model.classifier.weight[:, s2_columns, 0, 0] = weight[:, : len(TEN_M)]
        model.classifier.weight[:, 0, 0, 0] = weight[:, len(TEN_M)]  # VV
    return model


def constant_segmenter(classes: int, value: int) -> PixelLinear:
    """Segmentation logits that are the same everywhere: class ``value`` wins at every pixel."""
    model = PixelLinear(classes)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[value] = 5.0
    return model


def card(task: str, classes: list[str], chip_px: int, **changes: Any) -> dict[str, Any]:
    """A model card as fine-tuning writes it (bands, normalisation, task, classes, chip size)."""
    out = {
        "task": task,
        "classes": classes,
        "s1_bands": list(S1_BAND_NAMES),
        "s2_bands": list(S2_BAND_NAMES),
        "normalize": "ssl4eo",
        "backbone": "test-model",
        "chip_px": chip_px,
    }
    out.update(changes)
    return out


def register(
    model: nn.Module, name: str, model_card: dict[str, Any], tracking_uri: str, alias: str = "champion"
) -> str:
    """Log and register ``model`` (weights + card) under ``name@alias`` in a run of its own; returns the URI."""
    from eoforge.tracking.registry import register_backbone
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("predict-test-models")
    exp_id = exp.experiment_id if exp else client.create_experiment("predict-test-models")
    run_id = client.create_run(exp_id).info.run_id
    _, uri = register_backbone(model.eval(), name, alias, run_id, tracking_uri, model_card, artifact_name="model")
    client.set_terminated(run_id)
    return uri


def save_folder(model: nn.Module, model_card: dict[str, Any], folder: str) -> str:
    """Save ``model`` as the registry stores a version: ``weights.safetensors`` + ``card.json`` in ``folder``.

    ``folder``: a local path or an ``s3://`` URI. Returns ``folder``.
    """
    import json

    from eoforge.storage import filesystem_of
    from eoforge.tracking.registry import CARD_FILE, WEIGHTS_FILE
    from safetensors.torch import save

    fs, path = filesystem_of(folder)
    fs.create_dir(path, recursive=True)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    card_with_recipe = {**model_card, "architecture": model.architecture()}  # type: ignore[operator]
    for name, data in (
        (WEIGHTS_FILE, save(tensors, metadata={"format": "pt"})),
        (CARD_FILE, json.dumps(card_with_recipe, indent=1, sort_keys=True).encode()),
    ):
        with fs.open_output_stream(f"{path}/{name}") as out:
            out.write(data)
    return folder
