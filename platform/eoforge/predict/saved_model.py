"""A model given as a path: a saved model folder in the registry's weights-only format.

``model:`` (and ``embedding_model:``) of a predict config may name, instead of a registry URI, a
folder (local, ``file://``, ``s3://`` or ``gs://``) holding the two files a registered version
holds (:func:`eoforge.tracking.registry.register_backbone`): ``weights.safetensors`` (tensors
only) and ``card.json`` (bands, normalisation, task, classes and the ``architecture`` eoforge
rebuilds the module from). ``mlflow artifacts download -u models:/NAME/VERSION -d DIR`` makes one.

Nothing in the folder is ever unpickled: a folder without those two files is refused with
:class:`~eoforge.errors.UnsafeArtifactError`, naming any pickle it holds instead (a pretraining
``state.pt`` or fine-tuning ``finetune_state.pt`` checkpoint carries no card: register the model
and give its ``models:/`` URI). The weights' SHA-256 is taken on the driver and checked again
when the driver reads them for the actors (:func:`eoforge.predict.model.share_weights`), so every
window comes from the same bytes; it goes into the items'
lineage beside the path (redacted by :func:`eoforge.redact.redact`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

from eoforge.errors import ConfigError, UnsafeArtifactError
from eoforge.redact import redact
from eoforge.tracking.registry import CARD_FILE, WEIGHTS_FILE

#: Names that hold pickles (code runs when they are loaded): reported, never read.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")


def _folder(path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, folder path inside it) of a model folder; a weights or card file names its folder."""
    from eoforge.storage import filesystem_of

    fs, inner = filesystem_of(path, "model")
    inner = inner.rstrip("/")
    if PurePosixPath(inner).name in (WEIGHTS_FILE, CARD_FILE):
        inner = str(PurePosixPath(inner).parent)
    return fs, inner


def _folder_uri(uri: str) -> str:
    """A remote model URI without a trailing slash or a trailing weights / card file name."""
    out = uri.rstrip("/")
    for name in (WEIGHTS_FILE, CARD_FILE):
        out = out.removesuffix(f"/{name}")
    return out


def model_location(path: str) -> str:
    """Where a model folder is, as every process can open it: an absolute local path, or the folder's URI.

    A relative path is made absolute here, on the driver: the inference actors run in other
    working directories (on a cluster, a local path must be on a filesystem they share).
    """
    from eoforge.storage import is_remote

    return _folder_uri(path) if is_remote(path) else _folder(path)[1]


def _names(fs: Any, folder: str, shown: str) -> set[str]:
    """The file names directly in ``folder``.

    Raises:
        ConfigError: the folder does not exist or cannot be listed.
    """
    from pyarrow import fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=False))
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"model {shown}: no such model folder ({type(exc).__name__})") from None
    return {PurePosixPath(i.path).name for i in infos if i.type == pafs.FileType.File}


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def refuse_unless_saved_model(shown: str, names: set[str]) -> None:
    """Refuse a folder that is not weights + card (see module docstring).

    Raises:
        UnsafeArtifactError: naming what the folder holds and what to give instead.
    """
    if {WEIGHTS_FILE, CARD_FILE} <= names:
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES) or n == "MLmodel")
    missing = sorted({WEIGHTS_FILE, CARD_FILE} - names)
    if pickles:
        raise UnsafeArtifactError(
            f"model {shown}: refused: it holds {pickles}, pickled files (loading one runs whatever code its "
            f"writer put in it), and no {' or '.join(missing)}. eoforge loads a model from a path only as "
            f"{WEIGHTS_FILE} + {CARD_FILE} (tensors and a card, nothing to unpickle). A pretraining or "
            "fine-tuning checkpoint (state.pt, finetune_state.pt) carries no model card: register the model "
            "and give models:/NAME/VERSION, or download a registered version with "
            "`mlflow artifacts download -u models:/NAME/VERSION -d DIR` and give DIR"
        )
    raise UnsafeArtifactError(
        f"model {shown}: not an eoforge model folder: it holds {sorted(names) or 'no files'}, "
        f"without {' and '.join(missing)}"
    )


def weights_sha256(data: bytes) -> str:
    """Hex SHA-256 of a weights file's bytes."""
    return hashlib.sha256(data).hexdigest()


def read_saved_model(path: str) -> tuple[dict[str, Any], bytes, str]:
    """(card, weights bytes, redacted absolute location) of a saved model folder.

    Raises:
        ConfigError: no such folder; the card is not a JSON object.
        UnsafeArtifactError: not weights + card (see :func:`refuse_unless_saved_model`).
    """
    from eoforge.storage import is_remote

    fs, folder = _folder(path)
    shown = redact(_folder_uri(path) if is_remote(path) else folder)
    refuse_unless_saved_model(shown, _names(fs, folder, shown))
    try:
        card = json.loads(_read(fs, f"{folder}/{CARD_FILE}"))
    except ValueError as exc:
        raise ConfigError(f"model {shown}: {CARD_FILE} is not JSON: {exc}") from None
    if not isinstance(card, dict):
        raise ConfigError(f"model {shown}: {CARD_FILE} holds a {type(card).__name__}, not a model card")
    return card, _read(fs, f"{folder}/{WEIGHTS_FILE}"), shown


def module_of(shown: str, data: bytes, card: dict[str, Any]) -> Any:
    """The module the card's architecture describes, holding the weights (every tensor must fit).

    Raises:
        UnsafeArtifactError: not a safetensors file; no architecture; the weights do not fit it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from eoforge.finetune.registered import module_from_card

    try:
        state = load(data)
    except (SafetensorError, ValueError) as exc:
        raise UnsafeArtifactError(f"model {shown}: {WEIGHTS_FILE} is not a safetensors file: {exc}") from None
    return module_from_card(shown, state, card)


def read_pinned_weights(path: str, sha256: str) -> tuple[dict[str, Any], bytes, str]:
    """:func:`read_saved_model`, refused unless the weights are still the bytes the driver pinned.

    Raises:
        UnsafeArtifactError: the weights' SHA-256 is no longer ``sha256`` (the folder changed
            during the run); see also :func:`read_saved_model`.
    """
    card, data, shown = read_saved_model(path)
    got = weights_sha256(data)
    if got != sha256:
        raise UnsafeArtifactError(
            f"model {shown}: {WEIGHTS_FILE} changed during the run (SHA-256 {got[:12]}, pinned {sha256[:12]})"
        )
    return card, data, shown


def load_saved_model(path: str, sha256: str, map_location: Any = "cpu") -> Any:
    """The module of a saved model folder pinned to ``sha256``, on ``map_location``.

    Raises:
        UnsafeArtifactError: the folder changed since it was pinned, or its weights do not rebuild.
    """
    card, data, shown = read_pinned_weights(path, sha256)
    return module_of(shown, data, card).to(map_location)
