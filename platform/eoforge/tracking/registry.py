"""Model registry: register a model version (weights + card) with an alias; list, show and read models.

A version is two files, ``weights.safetensors`` and ``card.json``: data only. Reading one never
unpickles anything; a version an earlier eoforge stored as a pickle is refused (see
:func:`refuse_unless_weights`), and converted only by ``eoforge models migrate --trust-pickle``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eoforge.errors import ServiceError, UnsafeArtifactError

#: The two files of a registered model version: its weights, and the card that says how to rebuild it.
WEIGHTS_FILE, CARD_FILE = "weights.safetensors", "card.json"
#: ``eoforge.format`` tag of versions stored as weights + card.
WEIGHTS_FORMAT = "safetensors+card"


def register_backbone(
    model: Any,
    name: str,
    alias: str | None,
    run_id: str,
    tracking_uri: str,
    card: dict[str, Any],
    artifact_name: str = "backbone",
) -> tuple[str, str]:
    """Log ``model``'s weights and card into ``run_id``, register them under ``name`` and set ``alias``.

    Stored under the run's artifact folder ``ARTIFACT_NAME/<first 16 hex of the weights' SHA-256>``
    (so a second registration from the same run never rewrites an earlier version's files):
    ``weights.safetensors`` (the state dict, tensors only) and ``card.json`` (the card, plus the
    module's ``architecture()`` recipe under ``architecture`` when it has one). No pickle and no
    MLmodel file: the version is created on that folder directly
    (``MlflowClient.create_model_version``), so aliases work as for any MLflow model. Loading
    rebuilds the module from the card (:mod:`eoforge.finetune.registered`).

    Returns:
        (version, model URI ``models:/NAME@ALIAS``, or ``models:/NAME/VERSION`` without an alias).
    """
    import hashlib
    import json
    import tempfile

    from mlflow import MlflowClient
    from safetensors.torch import save_file

    client = MlflowClient(tracking_uri)
    recipe = getattr(model, "architecture", None)
    if callable(recipe) and "architecture" not in card:
        card = {**card, "architecture": recipe()}
    # copies: safetensors refuses tensors that share memory (views of one buffer)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="eoforge-register-") as tmp:
        save_file(tensors, str(Path(tmp) / WEIGHTS_FILE), metadata={"format": "pt"})
        (Path(tmp) / CARD_FILE).write_text(json.dumps(card, indent=1, sort_keys=True))
        folder = f"{artifact_name}/{hashlib.sha256((Path(tmp) / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]}"
        client.log_artifacts(run_id, tmp, folder)
    _ensure_registered_model(client, name)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{folder}"
    mv = client.create_model_version(name, source, run_id=run_id, tags={"eoforge.format": WEIGHTS_FORMAT})
    version = str(mv.version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    for key in ("plan_hash", "objective", "backbone", "task", "label_fraction", "mode"):
        if key in card:
            client.set_model_version_tag(name, version, f"eoforge.{key}", str(card[key]))
    return version, f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:  # registered before (or by a concurrent job)
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def list_models(tracking_uri: str) -> list[dict[str, Any]]:
    """Every registered model with its aliases and latest version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    out = []
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name='{rm.name}'")
        out.append(
            {
                "name": rm.name,
                "aliases": dict(rm.aliases or {}),
                "versions": len(versions),
                "latest": max((int(v.version) for v in versions), default=None),
            }
        )
    return out


def show_model(tracking_uri: str, spec: str) -> dict[str, Any]:
    """Details of ``NAME@ALIAS`` or ``NAME/VERSION`` (``models:/`` prefix optional)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    spec = spec.removeprefix("models:/")
    client = MlflowClient(tracking_uri)
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = spec.partition("/")
            if not version:
                raise ServiceError(f"model {spec!r}: give NAME@ALIAS or NAME/VERSION")
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ServiceError(f"model {spec!r}: not found in the registry at {tracking_uri}: {exc.message}") from None
    run = client.get_run(mv.run_id) if mv.run_id else None
    return {
        "name": mv.name,
        "version": mv.version,
        "aliases": list(mv.aliases or []),
        "source": mv.source,
        "run_id": mv.run_id,
        "tags": dict(mv.tags or {}),
        "metrics": dict(run.data.metrics) if run else {},
        "plan_hash": run.data.params.get("plan.hash") if run else None,
        "uri": f"models:/{mv.name}/{mv.version}",
    }


def resolve_model_version(tracking_uri: str, uri: str) -> Any:
    """The ModelVersion of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Raises:
        ServiceError: no such model, alias or version; the message lists what the registry has.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    spec = uri.removeprefix("models:/")
    client = MlflowClient(tracking_uri)
    if "@" in spec:
        name, alias, version = *spec.split("@", 1), ""
    else:
        name, _, version = spec.partition("/")
        alias = ""
    try:
        client.get_registered_model(name)
    except MlflowException:
        names = sorted(rm.name for rm in client.search_registered_models())
        raise ServiceError(
            f"{uri}: no registered model {name!r} at {tracking_uri}; registered models: {names}"
        ) from None
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if not version:
            raise ServiceError(f"{uri}: give models:/NAME@ALIAS or models:/NAME/VERSION")
        return client.get_model_version(name, version)
    except MlflowException:
        aliases = sorted(client.get_registered_model(name).aliases or {})
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        what = f"alias {alias!r}" if alias else f"version {version!r}"
        raise ServiceError(f"{uri}: model {name!r} has no {what}; aliases: {aliases}, versions: {versions}") from None


def _version_files(uri: str) -> set[str]:
    """Top-level artifact names of a model version (``models:/NAME/VERSION``); needs the tracking URI set."""
    import mlflow

    return {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=uri)}


def refuse_unless_weights(uri: str, files: set[str]) -> None:
    """Refuse a model version that is not stored as eoforge weights + card (see :func:`register_backbone`).

    Raises:
        UnsafeArtifactError: a pickled model of an earlier eoforge (MLflow's pytorch flavour), with
            the migration command; or anything else, naming what the version holds.
    """
    if {WEIGHTS_FILE, CARD_FILE} <= files:
        return
    if "MLmodel" in files:
        raise UnsafeArtifactError(
            f"{uri}: refused: it is stored as a pickle (MLflow's pytorch flavour, as eoforge registered models "
            "before weights + card), and loading a pickle runs whatever code whoever wrote it put in it. "
            f"If you trust everyone who can write that artifact store, convert it once with "
            f"`eoforge models migrate {uri} --trust-pickle` (a new version stored as weights + card; "
            "the aliases move to it); otherwise register the model again from its training run"
        )
    raise UnsafeArtifactError(
        f"{uri}: not an eoforge model: it holds {sorted(files) or 'no files'}, not {WEIGHTS_FILE} and {CARD_FILE}"
    )


def model_card(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """The card (``card.json``) of a model version.

    Raises:
        UnsafeArtifactError: the version is not stored as weights + card (a legacy pickle, or foreign).
    """
    import json
    import tempfile

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    uri = f"models:/{name}/{version}"
    refuse_unless_weights(uri, _version_files(uri))
    with tempfile.TemporaryDirectory(prefix="eoforge-card-") as tmp:  # MLflow's own download dirs are never removed
        path = mlflow.artifacts.download_artifacts(f"{uri}/{CARD_FILE}", dst_path=tmp)
        return json.loads(Path(path).read_text())


def check_weights_only(uri: str, tracking_uri: str | None = None) -> None:
    """Refuse, before any download, a model version that is not stored as weights + card.

    Raises:
        UnsafeArtifactError: a legacy pickle, or foreign (see :func:`refuse_unless_weights`).
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    refuse_unless_weights(uri, _version_files(uri))


def download_weight_bytes(uri: str, tracking_uri: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """(the bytes of ``weights.safetensors``, card) of a model version, via a temporary folder that is removed.

    Raises:
        UnsafeArtifactError: the version is not stored as weights + card (a legacy pickle, or foreign).
    """
    import json
    import tempfile

    import mlflow

    check_weights_only(uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="eoforge-model-") as tmp:
        card = json.loads(Path(mlflow.artifacts.download_artifacts(f"{uri}/{CARD_FILE}", dst_path=tmp)).read_text())
        return Path(mlflow.artifacts.download_artifacts(f"{uri}/{WEIGHTS_FILE}", dst_path=tmp)).read_bytes(), card


def download_weights(uri: str, tracking_uri: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict of tensors on the CPU, card) of a model version (:func:`download_weight_bytes`).

    ``weights.safetensors`` holds tensors only: nothing is unpickled.

    Raises:
        UnsafeArtifactError: the version is not stored as weights + card (a legacy pickle, or foreign).
    """
    from safetensors.torch import load

    data, card = download_weight_bytes(uri, tracking_uri)
    return load(data), card


def load_legacy_pickled_model(uri: str, tracking_uri: str, *, trust_pickle: bool) -> tuple[Any, dict[str, Any]]:
    """(module, card) of a version an earlier eoforge registered with MLflow's pytorch flavour (a pickle).

    Unpickling runs code from the artifact store, so this refuses unless ``trust_pickle`` is True
    (``eoforge models migrate --trust-pickle``); nothing else in eoforge calls it.
    """
    import tempfile

    import mlflow
    from mlflow.models import Model

    if not trust_pickle:
        raise UnsafeArtifactError(
            f"{uri}: loading a pickled model runs code from the artifact store; pass --trust-pickle only if you "
            "trust everyone who can write it"
        )
    mlflow.set_tracking_uri(tracking_uri)
    files = _version_files(uri)
    if "MLmodel" not in files:
        raise UnsafeArtifactError(f"{uri}: not a legacy pickled model (it holds {sorted(files)})")
    import mlflow.pytorch

    with tempfile.TemporaryDirectory(prefix="eoforge-legacy-") as tmp:
        card = dict(Model.load(mlflow.artifacts.download_artifacts(f"{uri}/MLmodel", dst_path=tmp)).metadata or {})
    with tempfile.TemporaryDirectory(prefix="eoforge-legacy-") as tmp:
        return mlflow.pytorch.load_model(uri, dst_path=tmp, map_location="cpu"), card


def promote(tracking_uri: str, name: str, version: str, alias: str) -> str:
    """Point ``alias`` of ``name`` at ``version`` (by hand: ``eoforge models promote``); returns the URI."""
    from mlflow import MlflowClient

    resolve_model_version(tracking_uri, f"models:/{name}/{version}")  # clean error if missing
    MlflowClient(tracking_uri).set_registered_model_alias(name, alias, str(version))
    return f"models:/{name}@{alias}"
