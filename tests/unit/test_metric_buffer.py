"""The buffered metric logger: logging never waits on the tracking server; what cannot be sent is counted."""

from __future__ import annotations

import time

from eoforge.stack_state import free_port
from eoforge.tracking.metric_buffer import LOST_METRIC, MetricLogger


def test_logging_to_a_server_that_is_down_returns_at_once_and_counts_what_is_lost() -> None:
    # nothing listens on the port: every send is refused (a real connection, no mock)
    logger = MetricLogger(f"http://127.0.0.1:{free_port()}", "0" * 32, max_pending=5, request_timeout_s=1)
    t0 = time.perf_counter()
    for step in range(10):
        logger.log({"train/loss": 1.0 / (step + 1)}, step)
    assert time.perf_counter() - t0 < 0.5  # MLflow's own client would retry each call for minutes
    lost = logger.close(timeout_s=1.0)
    assert lost == 10 and logger.dropped >= 5  # 5 dropped from the full buffer, 5 never sent


def test_metrics_reach_the_run_and_the_lost_count_is_logged(tmp_path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a real MLflow store (no server): sent through the client
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("buffer", artifact_location=str(tmp_path / "a")))
    logger = MetricLogger(uri, run.info.run_id)
    for step in range(1, 4):
        logger.log({"train/loss": float(step)}, step)
    assert logger.close() == 0
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert client.get_run(run.info.run_id).data.metrics[LOST_METRIC] == 0
