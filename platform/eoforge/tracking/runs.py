"""MLflow runs: where the server is, one run per job, resumed by run name.

The tracking URI is, in order: the config's ``mlflow.tracking_uri``, ``$MLFLOW_TRACKING_URI``,
or the local stack's server (``$EOFORGE_HOME/stack.json`` written by ``eoforge up``).
The local stack's MLflow wants a login: when the URI is its server and ``$MLFLOW_TRACKING_USERNAME``
is unset, this process logs in with the stack's credentials (``$EOFORGE_HOME/secrets/``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from eoforge.errors import ServiceError
from eoforge.redact import redact_tree
from eoforge.tracking.metric_buffer import MetricLogger  # noqa: F401  (re-exported: the loops import it here)

RUN_NAME_TAG = "eoforge.run_name"


def eoforge_home() -> Path:
    """The local state directory (``$EOFORGE_HOME``, default ``./.eoforge``)."""
    return Path(os.environ.get("EOFORGE_HOME", ".eoforge")).absolute()


def _log_in_to_local_stack() -> None:
    """Put the local stack's MLflow login into this process's environment (MLflow's client reads it there).

    An explicit ``$MLFLOW_TRACKING_USERNAME`` wins. The password is never logged.
    """
    from eoforge.stack_secrets import MLFLOW_ADMIN, MLFLOW_PASSWORD_FILE, mlflow_password, secrets_dir

    if os.environ.get("MLFLOW_TRACKING_USERNAME") or not (secrets_dir(eoforge_home()) / MLFLOW_PASSWORD_FILE).exists():
        return  # a login of the caller's own, or a stack without one
    os.environ["MLFLOW_TRACKING_PASSWORD"] = mlflow_password(eoforge_home())
    os.environ["MLFLOW_TRACKING_USERNAME"] = MLFLOW_ADMIN


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Pick the tracking URI (see module docstring) and check that the server answers."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    state = eoforge_home() / "stack.json"
    stack_url = json.loads(state.read_text()).get("mlflow_url") if state.is_file() else None
    uri = uri or stack_url
    if uri and stack_url and uri.rstrip("/") == stack_url.rstrip("/"):
        _log_in_to_local_stack()
    if not uri:
        raise ServiceError(
            "MLflow: no tracking URI: set mlflow.tracking_uri in the config or $MLFLOW_TRACKING_URI, "
            "or start the local stack with `eoforge up`"
        )
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        except requests.RequestException as exc:
            raise ServiceError(f"MLflow tracking server {uri}: unreachable ({type(exc).__name__}: {exc})") from None
    return uri


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {'a.b.c': 'value'} with string values (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


def start_or_resume_run(
    tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
) -> tuple[str, bool]:
    """Return (run_id, resumed): the run tagged with ``run_name``, or a new one with ``tags``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    previous = find_named_run(tracking_uri, experiment, run_name)
    if previous is not None:
        client.update_run(previous.info.run_id, status="RUNNING")
        return previous.info.run_id, True
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **(tags or {})})
    return run.info.run_id, False


def find_named_run(tracking_uri: str, experiment: str, run_name: str) -> Any | None:
    """The newest run tagged with ``run_name`` in ``experiment`` (read only: nothing is created or changed)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_url(tracking_uri: str, run_id: str) -> str:
    """Browser URL of a run in the MLflow UI."""
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).get_run(run_id)
    return f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def log_plan_stats(client: Any, run_id: str, stats: dict[str, Any]) -> dict[str, Any]:
    """Record what planning kept and skipped with the run that trains on the plan.

    ``stats`` is the plan's own record (:func:`eoforge.plan.io.plan_stats`). Logs
    ``data/plan_stats.json`` (stage counts, pairing, every skipped item and why) and metrics
    ``plan/<stage>`` and ``plan/skipped_items[/<reason>]``. Plans written before stats existed
    (``{}``) log nothing. Returns ``stats``.
    """
    if not stats:
        return {}
    stats = redact_tree(stats)  # plans written by older versions may quote signed hrefs
    client.log_dict(run_id, stats, "data/plan_stats.json")
    metrics = {f"plan/{k}": float(v) for k, v in stats.get("stages", {}).items() if isinstance(v, int | float)}
    by_reason = stats.get("skipped_by_reason", {})
    metrics["plan/skipped_items"] = float(sum(by_reason.values()))
    for reason, n in by_reason.items():
        key = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in reason).strip().replace(" ", "_")
        metrics[f"plan/skipped_items/{key[:200]}"] = float(n)
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    return stats
