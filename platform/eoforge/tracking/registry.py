"""Model registry: register a backbone version with an alias; list and show models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eoforge.errors import ServiceError


def register_backbone(
    model: Any,
    name: str,
    alias: str | None,
    run_id: str,
    tracking_uri: str,
    card: dict[str, Any],
    artifact_name: str = "backbone",
) -> tuple[str, str]:
    """Log ``model`` (a torch module) into ``run_id``, register it under ``name`` and set ``alias``.

    The card is stored as the model's ``metadata`` (read back by :func:`model_card`).

    Returns:
        (version, model URI ``models:/NAME@ALIAS``, or ``models:/NAME/VERSION`` without an alias).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    before = client.get_run(run_id).info  # a finished run keeps its status and end time
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pytorch.log_model(
            model,
            name=artifact_name,
            registered_model_name=name,
            metadata=card,
            pip_requirements=[],
            serialization_format="pickle",
        )
    if before.end_time:
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    for key in ("plan_hash", "objective", "backbone", "task", "label_fraction", "mode"):
        if key in card:
            client.set_model_version_tag(name, version, f"eoforge.{key}", str(card[key]))
    return version, f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


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


def model_card(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """The card (``metadata``) a model version was logged with; {} when it has none."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model

    mv = MlflowClient(tracking_uri).get_model_version(name, version)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="eoforge-card-") as tmp:  # MLflow's own download dirs are never removed
        try:
            path = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}/MLmodel", dst_path=tmp)
            info = Model.load(path)
        except Exception:  # an artifact not logged by eoforge: no card
            return {"source": mv.source}
    return dict(info.metadata or {})


def load_registered_model(uri: str, map_location: Any = "cpu", tracking_uri: str | None = None) -> Any:
    """The torch module of a registered model version, downloaded into a temporary folder that is removed.

    (``mlflow.pytorch.load_model`` without ``dst_path`` leaves every download under the system's
    temporary folder: tens of MB per load, for every job and every actor.)
    """
    import tempfile

    import mlflow
    import mlflow.pytorch

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="eoforge-model-") as tmp:
        return mlflow.pytorch.load_model(uri, dst_path=tmp, map_location=map_location)


def promote(tracking_uri: str, name: str, version: str, alias: str) -> str:
    """Point ``alias`` of ``name`` at ``version`` (by hand: ``eoforge models promote``); returns the URI."""
    from mlflow import MlflowClient

    resolve_model_version(tracking_uri, f"models:/{name}/{version}")  # clean error if missing
    MlflowClient(tracking_uri).set_registered_model_alias(name, alias, str(version))
    return f"models:/{name}@{alias}"


@dataclass(frozen=True)
class ChampionDecision:
    """Whether a new version took the champion alias, and why."""

    promoted: bool
    reason: str
    previous_version: str | None
    previous_value: float | None


METRIC_NAME_TAG, METRIC_VALUE_TAG = "eoforge.val_metric", "eoforge.val_metric_value"


def decide_champion(
    tracking_uri: str, name: str, version: str, metric: str, value: float, alias: str = "champion"
) -> ChampionDecision:
    """Move ``alias`` to ``version`` only if its validation ``metric`` beats the current champion's.

    The rule: no current champion -> promote; the champion was selected on another metric ->
    keep it (not comparable); otherwise promote only when ``value`` is strictly greater.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    client.set_model_version_tag(name, version, METRIC_NAME_TAG, metric)
    client.set_model_version_tag(name, version, METRIC_VALUE_TAG, repr(float(value)))
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is None or current.version == str(version):
        client.set_registered_model_alias(name, alias, str(version))
        return ChampionDecision(
            True, f"no current {alias}: version {version} ({metric} {value:.4f}) takes it", None, None
        )
    cur_metric = (current.tags or {}).get(METRIC_NAME_TAG)
    cur_value = float((current.tags or {}).get(METRIC_VALUE_TAG, "nan"))
    if cur_metric != metric:
        return ChampionDecision(
            False,
            f"kept version {current.version}: it was selected on {cur_metric!r}, not comparable with {metric!r}",
            current.version,
            cur_value,
        )
    if value > cur_value:
        client.set_registered_model_alias(name, alias, str(version))
        return ChampionDecision(
            True,
            f"version {version} {metric} {value:.4f} > {cur_value:.4f} of version {current.version}",
            current.version,
            cur_value,
        )
    return ChampionDecision(
        False,
        f"kept version {current.version}: {metric} {cur_value:.4f} >= {value:.4f} of version {version}",
        current.version,
        cur_value,
    )
