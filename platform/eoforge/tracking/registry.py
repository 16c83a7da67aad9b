"""Model registry: register a backbone version with an alias; list and show models."""

from __future__ import annotations

from typing import Any

from eoforge.errors import ServiceError


def register_backbone(
    model: Any, name: str, alias: str, run_id: str, tracking_uri: str, card: dict[str, Any]
) -> tuple[str, str]:
    """Log ``model`` (a torch module) into ``run_id``, register it under ``name`` and set ``alias``.

    Returns:
        (version, model URI ``models:/NAME@ALIAS``).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pytorch.log_model(
            model,
            name="backbone",
            registered_model_name=name,
            metadata=card,
            pip_requirements=[],
            serialization_format="pickle",
        )
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri)
    client.set_registered_model_alias(name, alias, version)
    for key in ("plan_hash", "objective", "backbone"):
        if key in card:
            client.set_model_version_tag(name, version, f"eoforge.{key}", str(card[key]))
    return version, f"models:/{name}@{alias}"


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
