"""Model registry: register a model version (weights + card) with an alias; list, show and read models.

A version is two files, ``weights.safetensors`` and ``card.json``: data only. Reading one never
unpickles anything; a version an earlier eoforge stored as a pickle is refused (see
:func:`refuse_unless_weights`), and converted only by ``eoforge models migrate --trust-pickle``.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def download_weights(uri: str, tracking_uri: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict of tensors on the CPU, card) of a model version, via a temporary folder that is removed.

    Reads ``weights.safetensors`` (tensors only: nothing is unpickled) and ``card.json``.

    Raises:
        UnsafeArtifactError: the version is not stored as weights + card (a legacy pickle, or foreign).
    """
    import json
    import tempfile

    import mlflow
    from safetensors.torch import load_file

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    refuse_unless_weights(uri, _version_files(uri))
    with tempfile.TemporaryDirectory(prefix="eoforge-model-") as tmp:
        card = json.loads(Path(mlflow.artifacts.download_artifacts(f"{uri}/{CARD_FILE}", dst_path=tmp)).read_text())
        return load_file(mlflow.artifacts.download_artifacts(f"{uri}/{WEIGHTS_FILE}", dst_path=tmp)), card


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


@dataclass(frozen=True)
class ChampionDecision:
    """Whether a new version took the champion alias, and why.

    Attributes:
        promoted: the alias points at the new version (as read back after setting it).
        reason: one line for logs and the run's ``eoforge.champion_reason`` tag.
        previous_version / previous_value: the champion when the decision started (None: none).
    """

    promoted: bool
    reason: str
    previous_version: str | None
    previous_value: float | None


METRIC_NAME_TAG, METRIC_VALUE_TAG = "eoforge.val_metric", "eoforge.val_metric_value"
#: Tag of a version whose champion decision started (value: when, Unix seconds): the race's entrants.
DECIDED_TAG = "eoforge.champion_decided_at"
#: Decisions started less than this long ago (seconds) count as concurrent.
RACE_WINDOW_S = 900.0
#: Set-and-read-back rounds at most, before giving up with the alias as read last.
CHAMPION_ROUNDS = 5


@dataclass(frozen=True)
class _Entry:
    version: str
    metric: str | None
    value: float


def _entry(mv: Any) -> _Entry:
    tags = mv.tags or {}
    return _Entry(str(mv.version), tags.get(METRIC_NAME_TAG), float(tags.get(METRIC_VALUE_TAG, "nan")))


def _holder(client: Any, name: str, alias: str) -> _Entry | None:
    from mlflow.exceptions import MlflowException

    try:
        return _entry(client.get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def _contenders(client: Any, name: str, version: str, metric: str) -> list[_Entry]:
    """Other versions of ``name`` whose champion decision on ``metric`` started within :data:`RACE_WINDOW_S`."""
    import time

    now = time.time()
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        pending = (mv.tags or {}).get(DECIDED_TAG)
        entry = _entry(mv)
        if pending is None or entry.version == str(version) or entry.metric != metric:
            continue
        try:
            fresh = now - float(pending) < RACE_WINDOW_S
        except ValueError:
            fresh = False
        if fresh:
            out.append(entry)
    return out


def decide_champion(
    tracking_uri: str, name: str, version: str, metric: str, value: float, alias: str = "champion"
) -> ChampionDecision:
    """Move ``alias`` to ``version`` only if its validation ``metric`` beats the current champion's.

    The rule: no current champion -> promote; the champion was selected on another metric ->
    keep it (not comparable); otherwise promote only when ``value`` is strictly greater.

    Concurrent decisions (two sweeps finishing together) are settled by a compare-and-set done
    by hand, since MLflow has no conditional alias update:

    1. the version is tagged with its metric, its value and :data:`DECIDED_TAG` (now) before
       anything is read, so every decision that reads later sees it;
    2. the alias holder and the versions of the other decisions of the last :data:`RACE_WINDOW_S`
       on the same metric (the race's entrants) are read; if the holder, or an entrant that
       beats this version, is at least as good, the alias is left alone and the reason names it;
    3. otherwise the alias is set, then READ BACK: if another writer's version now holds it and
       is at least as good (or not comparable), this decision lost and says so; if it is worse,
       it overwrote this one and the alias is set again; if this version holds it but an entrant
       is better (this write landed after that one's), the alias is restored to that entrant.
       Up to :data:`CHAMPION_ROUNDS` rounds.

    Of two racing decisions the better version ends up holding the alias, whatever the order of
    their reads and writes (each one's tag precedes its reads, so at least the later reader sees
    the other; the entrants stay visible for :data:`RACE_WINDOW_S` after they finish, so a late
    write is caught by its own read-back). Residual window, since MLflow has no conditional alias
    update: with three or more decisions within the same few requests, a restore decided on a read
    that missed a still better entrant can land after that entrant's last read-back, leaving the
    second best in place until the next decision. And an entrant of the last :data:`RACE_WINDOW_S`
    that is better than this version keeps it from taking the alias even if someone demoted
    that entrant by hand meanwhile.
    """
    import time

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    version = str(version)
    client.set_model_version_tag(name, version, METRIC_NAME_TAG, metric)
    client.set_model_version_tag(name, version, METRIC_VALUE_TAG, repr(float(value)))
    client.set_model_version_tag(name, version, DECIDED_TAG, repr(time.time()))
    return _settle(client, name, version, metric, float(value), alias)


def _settle(client: Any, name: str, version: str, metric: str, value: float, alias: str) -> ChampionDecision:
    """Steps 2 and 3 of :func:`decide_champion` (the version is tagged)."""
    first = _holder(client, name, alias)
    prev_version = first.version if first and first.version != version else None
    prev_value = first.value if first and first.version != version else None
    ours = f"version {version} ({metric} {value:.4f})"
    for _ in range(CHAMPION_ROUNDS):
        holder = _holder(client, name, alias)
        rivals = _contenders(client, name, version, metric)
        if holder is not None and holder.version != version:
            if holder.metric != metric:
                why = f"it was selected on {holder.metric!r}, not comparable with {metric!r}"
                return ChampionDecision(False, f"kept version {holder.version}: {why}", holder.version, holder.value)
            if holder.value >= value:
                lost = " (set by a concurrent decision)" if holder.version != prev_version else ""
                why = f"{metric} {holder.value:.4f} >= {value:.4f} of version {version}{lost}"
                return ChampionDecision(False, f"kept version {holder.version}: {why}", holder.version, holder.value)
        better = max((r for r in rivals if r.value > value), key=lambda r: r.value, default=None)
        if better is not None:  # a concurrent decision has a better version: it takes the alias, not us
            if holder is not None and holder.version == version:
                client.set_registered_model_alias(name, alias, better.version)  # restore it
            why = f"a concurrent decision for version {better.version} ({metric} {better.value:.4f}) is better"
            if holder is not None and holder.version == version:
                why += f"; {alias} handed back to it"
            return ChampionDecision(False, f"{ours} did not take {alias}: {why}", prev_version, prev_value)
        if holder is not None and holder.version == version:  # read back: ours, and no entrant is better
            if prev_version is None:
                reason = f"no current {alias}: {ours} takes it"
            else:
                reason = f"version {version} {metric} {value:.4f} > {prev_value:.4f} of version {prev_version}"
            return ChampionDecision(True, reason, prev_version, prev_value)
        client.set_registered_model_alias(name, alias, version)  # then read back, next round
    holder = _holder(client, name, alias)
    won = holder is not None and holder.version == version
    last = holder.version if holder else None
    why = f"{alias} still moving after {CHAMPION_ROUNDS} rounds; it points at version {last}"
    return ChampionDecision(won, why, prev_version, prev_value)
