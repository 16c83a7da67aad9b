"""One MLflow run per job, opened and closed the same way by every driver.

:func:`job_run` opens the run (or resumes it by run name), logs the config as parameters and as
``config/resolved.yaml``, the plan's hash and stats, and tags the job kind; it yields a
:class:`JobRun`; when the block ends the run is FINISHED, or FAILED if it raised (the error
goes on unchanged).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eoforge.progress import say
from eoforge.redact import redact_tree
from eoforge.tracking.runs import flatten, log_plan_stats, run_url, start_or_resume_run


@dataclass
class JobRun:
    """An open job run.

    Attributes:
        client: an ``MlflowClient`` of the tracking server.
        run_id: the run.
        resumed: the run existed (by name) and was resumed.
        url: the run's page in the MLflow UI.
    """

    client: Any
    run_id: str
    resumed: bool
    url: str

    def tag(self, **tags: str) -> None:
        """Set tags (``eoforge_x=...`` -> ``eoforge.x``)."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key.replace("_", ".", 1) if key.startswith("eoforge_") else key, value)

    def metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        """Log several metrics at one step, in one request."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


@contextmanager
def job_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    job: str,
    config: Mapping[str, Any],
    plan_hash: str | None = None,
    plan_stats: dict[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    label: str = "MLflow run",
    artifact: str = "config/resolved.yaml",
    not_params: frozenset[str] = frozenset(),
) -> Iterator[JobRun]:
    """Open or resume the job's run; FINISHED when the block ends, FAILED when it raises.

    Args:
        tracking_uri: the MLflow server.
        experiment: the experiment (created when missing).
        run_name: the run's name (a run with this name is resumed).
        job: the job kind, tag ``eoforge.job``.
        config: the resolved config (``model_dump(mode="json")``): parameters and ``config/resolved.yaml``
            (every string redacted: :func:`eoforge.redact.redact_tree`).
        plan_hash: tag ``eoforge.plan_hash`` and parameter ``plan.hash``.
        plan_stats: the plan's record (:func:`eoforge.tracking.runs.log_plan_stats`).
        params: more parameters (a new run only).
        tags: more tags of a new run (e.g. ``mlflow.parentRunId`` of a sweep's trial).
        label: how the progress line names the run (``MLflow run started: <url>``).
        artifact: where the config's YAML goes in the run.
        not_params: top-level config keys left out of the parameters (still in the YAML).
    """
    import mlflow
    import yaml

    config = redact_tree(dict(config))  # no signed URL or embedded credential in parameters or the YAML
    run_id, resumed = start_or_resume_run(tracking_uri, experiment, run_name, tags={"eoforge.job": job, **(tags or {})})
    client = mlflow.MlflowClient(tracking_uri)
    if not resumed:
        flat = flatten({k: v for k, v in config.items() if k not in not_params})
        flat.update(redact_tree(dict(params or {})))
        if plan_hash:
            flat["plan.hash"] = plan_hash
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in flat.items()])
        client.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False), artifact)
        if plan_stats and log_plan_stats(client, run_id, plan_stats).get("stages"):
            say(f"plan stages: {', '.join(f'{k}={v}' for k, v in plan_stats['stages'].items())}")
    if plan_hash:
        client.set_tag(run_id, "eoforge.plan_hash", plan_hash)
    run = JobRun(client, run_id, resumed, run_url(tracking_uri, run_id))
    say(f"{label} {'resumed' if resumed else 'started'}: {run.url}")
    try:
        yield run
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
