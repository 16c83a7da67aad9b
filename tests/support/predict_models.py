"""Small models with known outputs for the predict tests, registered in a real MLflow registry.

They are pickled by value (cloudpickle), so Ray's inference actors load them without importing
the tests package.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from torch import Tensor, nn

#: 10 m S2 bands (B02, B03, B04, B08): their pixels are the same in every window that covers them.
TEN_M = [S2_BAND_NAMES.index(b) for b in ("B02", "B03", "B04", "B08")]


class PixelSegmenter(nn.Module):
    """Segmentation logits from each pixel alone: a fixed 1 x 1 map of the 10 m bands and VV.

    ``forward(s1, s2)``: s1 (B, 2, H, W), s2 (B, 12, H, W) -> (B, K, H, W). The output at a pixel
    depends only on that pixel, so every window that covers it agrees: a seam would show.
    """

    def __init__(self, classes: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(classes, len(TEN_M) + 1, generator=g) * 2)
        self.backbone = nn.Identity()  # embeddings are not asked of this model

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """(B, K, H, W) logits."""
        x = torch.cat([s2[:, TEN_M], s1[:, :1]], dim=1)
        return torch.einsum("kc,bchw->bkhw", self.weight, x)


class ConstantSegmenter(nn.Module):
    """Segmentation logits that are the same everywhere: class ``value`` wins at every pixel."""

    def __init__(self, classes: int, value: int) -> None:
        super().__init__()
        logits = torch.zeros(classes)
        logits[value] = 5.0
        self.register_buffer("logits", logits)

    def forward(self, s1: Tensor, s2: Tensor) -> Tensor:
        """(B, K, H, W) logits, constant."""
        b, _, h, w = s2.shape
        return self.logits.view(1, -1, 1, 1).expand(b, -1, h, w).clone()


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
    """Log and register ``model`` (pickled by value) under ``name@alias`` in a run of its own; returns the URI."""
    import cloudpickle
    from eoforge.tracking.registry import register_backbone
    from mlflow import MlflowClient

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("predict-test-models")
    exp_id = exp.experiment_id if exp else client.create_experiment("predict-test-models")
    run_id = client.create_run(exp_id).info.run_id
    _, uri = register_backbone(model.eval(), name, alias, run_id, tracking_uri, model_card, artifact_name="model")
    client.set_terminated(run_id)
    return uri
