"""``model:`` as a saved model folder (weights.safetensors + card.json), on disk and in moto's S3 (no Ray).

The folder is checked on the driver before any read (card against the reader, weights against
the card's architecture), pinned to its weights' SHA-256, and loaded by the actors only as
tensors; anything else (a pickled checkpoint, a folder without a card) is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from eoforge.bands import DFC_CLASSES
from eoforge.errors import ConfigError, UnsafeArtifactError
from eoforge.predict.model import resolve_models
from eoforge.predict.saved_model import load_saved_model, read_saved_model
from eoforge.storage import filesystem_of, s3_filesystem

from tests.support.predict_models import card, pixel_segmenter, save_folder
from tests.support.s3 import aws_env

CLASSES = list(DFC_CLASSES)
NO_REGISTRY = "http://127.0.0.1:9"  # a saved folder never asks the registry: nothing listens here


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A model folder's location: on local disk, or in a bucket of the moto server."""
    if request.param == "local":
        return str(tmp_path / "models" / "pixel")
    aws_env(monkeypatch, request.getfixturevalue("s3_server"), tmp_path, "saved-model-secret-0123")
    s3_filesystem(allow_bucket_creation=True).create_dir("eoforge-models")
    return f"s3://eoforge-models/{tmp_path.name}/pixel"


def _bytes(uri: str) -> bytes:
    fs, path = filesystem_of(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def test_a_saved_folder_is_pinned_to_its_weights_and_loads_the_same_model(where: str) -> None:
    model = pixel_segmenter(len(CLASSES)).eval()
    save_folder(model, card("segmentation", CLASSES, 32), where)
    models = resolve_models(NO_REGISTRY, where, None, ["classes"], None)
    ref = models.task
    assert ref is not None and not ref.registered
    assert ref.uri == where and ref.path == where
    assert ref.sha256 == hashlib.sha256(_bytes(f"{where}/weights.safetensors")).hexdigest()
    assert ref.version == f"sha256:{ref.sha256[:12]}" and ref.task == "segmentation"
    assert models.window_px == 32 and models.normalize == "ssl4eo"
    loaded = load_saved_model(where, ref.sha256)
    s1, s2 = torch.randn(2, 2, 32, 32), torch.randn(2, 12, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.eval()(s1, s2), model(s1, s2))


def test_a_relative_folder_is_pinned_as_an_absolute_path_for_the_actors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_folder(pixel_segmenter(len(CLASSES)), card("segmentation", CLASSES, 32), str(tmp_path / "m"))
    monkeypatch.chdir(tmp_path)
    ref = resolve_models(NO_REGISTRY, "m/weights.safetensors", None, ["classes"], None).task
    assert ref is not None and ref.path == ref.uri == str(tmp_path / "m")
    monkeypatch.chdir("/")
    assert ref.sha256 is not None and load_saved_model(ref.path, ref.sha256) is not None


def test_a_folder_whose_weights_changed_after_pinning_is_refused(tmp_path: Path) -> None:
    folder = save_folder(pixel_segmenter(len(CLASSES)), card("segmentation", CLASSES, 32), str(tmp_path / "m"))
    ref = resolve_models(NO_REGISTRY, folder, None, ["classes"], None).task
    assert ref is not None and ref.sha256 is not None
    save_folder(pixel_segmenter(3), card("segmentation", CLASSES[:3], 32), folder)
    with pytest.raises(UnsafeArtifactError, match="changed during the run"):
        load_saved_model(folder, ref.sha256)


def test_the_card_of_a_saved_folder_is_enforced_like_a_registered_one(tmp_path: Path) -> None:
    wrong = save_folder(
        pixel_segmenter(len(CLASSES)),
        card("segmentation", CLASSES, 32, s2_bands=["B04", "B03", "B02"]),
        str(tmp_path / "wrong-bands"),
    )
    with pytest.raises(ConfigError, match=r"s2_bands \['B04', 'B03', 'B02'\]"):
        resolve_models(NO_REGISTRY, wrong, None, ["classes"], None)
    backbone = save_folder(pixel_segmenter(len(CLASSES)), card(None, CLASSES, 32), str(tmp_path / "no-task"))
    with pytest.raises(ConfigError, match="names no task"):
        resolve_models(NO_REGISTRY, backbone, None, ["classes"], None)


def test_weights_that_do_not_fit_the_cards_architecture_are_refused_on_the_driver(tmp_path: Path) -> None:
    folder = save_folder(pixel_segmenter(len(CLASSES)), card("segmentation", CLASSES, 32), str(tmp_path / "m"))
    other = save_folder(pixel_segmenter(3), card("segmentation", CLASSES[:3], 32), str(tmp_path / "other"))
    (Path(folder) / "weights.safetensors").write_bytes((Path(other) / "weights.safetensors").read_bytes())
    with pytest.raises(UnsafeArtifactError, match="do not fit the card's architecture"):
        resolve_models(NO_REGISTRY, folder, None, ["classes"], None)


def test_a_pickled_checkpoint_or_a_folder_without_a_card_is_refused_without_loading(tmp_path: Path) -> None:
    ckpt = tmp_path / "finetune-checkpoint"
    ckpt.mkdir()
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):  # what unpickling would run
            return (marker.write_text, ("ran",))

    torch.save({"model": pixel_segmenter(3).state_dict(), "planted": Planted()}, ckpt / "finetune_state.pt")
    with pytest.raises(UnsafeArtifactError, match=r"finetune_state\.pt.*pickled.*models:/NAME/VERSION"):
        resolve_models(NO_REGISTRY, str(ckpt), None, ["classes"], None)
    assert not marker.exists()

    no_card = tmp_path / "no-card"
    save_folder(pixel_segmenter(3), card("segmentation", CLASSES[:3], 32), str(no_card))
    (no_card / "card.json").unlink()
    with pytest.raises(UnsafeArtifactError, match=r"without card\.json"):
        resolve_models(NO_REGISTRY, str(no_card), None, ["classes"], None)
    with pytest.raises(ConfigError, match="no such model folder"):
        read_saved_model(str(tmp_path / "missing"))
