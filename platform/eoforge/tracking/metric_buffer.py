"""Metric logging that never stalls training on the tracking server: a bounded buffer, sent in the background.

MLflow's client retries a failed request for about four minutes (7 retries, exponential
back-off), then raises: a training loop logging through it stops while the tracking server
restarts, and fails if it stays away longer. :class:`MetricLogger` (every training loop's rank 0
logs through it) instead:

- ``log`` stamps the metrics with their step and wall-clock time, appends them to a buffer of at
  most ``max_pending`` metrics and returns: no network I/O on the training thread;
- a background thread sends the buffer in batches (MLflow's ``runs/log-batch``, at most
  :data:`BATCH_LIMIT` metrics a request), one attempt per request with a short time-out. When a
  send fails (server down, restarting, answering 5xx) the batch is kept and sent again after a
  back-off (0.5 s, doubling up to ``max_backoff_s``): metrics logged during an outage arrive once
  the server is back, with their own step and time. One line reports the outage, one its end;
- when the buffer is full, the oldest metrics are dropped and counted;
- ``close`` sends what is left, for at most ``close_timeout_s``, then logs metric
  :data:`LOST_METRIC` (metrics dropped, or still unsent when time ran out; 0 when none) into the
  run and returns that count. If even that cannot reach the server, a line in the job's log says
  how many were lost.

What a process that dies (a lost node) had buffered and not yet sent is lost with it; sends
normally follow a ``log`` within milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from eoforge.progress import say

#: MLflow's limit of metrics in one ``log-batch`` request.
BATCH_LIMIT = 1000
#: The run's metric that counts metrics lost (dropped when the buffer was full, or unsent at close).
LOST_METRIC = "tracking/lost_metrics"


class MetricLogger:
    """Rank-0 metric logging into an existing run, buffered and sent in the background (module docstring).

    Attributes:
        client: an ``MlflowClient`` of the server (tags and artifacts go through it, synchronously).
        run_id: the run.
        dropped: metrics dropped because the buffer was full.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        max_pending: int = 100_000,
        request_timeout_s: float = 10.0,
        max_backoff_s: float = 10.0,
        close_timeout_s: float = 120.0,
    ) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.dropped = 0
        self._max_pending = max_pending
        self._max_backoff_s = max_backoff_s
        self._close_timeout_s = close_timeout_s
        self._send = _sender(tracking_uri, run_id, self.client, request_timeout_s)
        self._pending: deque[Any] = deque()
        self._inflight: list[Any] = []
        self._cond = threading.Condition()
        self._closing = False
        self._give_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eoforge-metric-logger", daemon=True)
        self._thread.start()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer several metrics at one step (timestamped now); returns at once."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._cond:
            self._pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
            self._drop_overflow()
            self._cond.notify()

    def pending(self) -> int:
        """Metrics buffered and not yet acknowledged by the server."""
        with self._cond:
            return len(self._pending) + len(self._inflight)

    def close(self, timeout_s: float | None = None) -> int:
        """Send what is buffered, then log :data:`LOST_METRIC`; returns the number of metrics lost.

        Sending stops after ``timeout_s`` (default ``close_timeout_s``); what is still unsent then counts as lost.
        """
        timeout_s = self._close_timeout_s if timeout_s is None else timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._give_up.set()
            self._thread.join()
        lost = self.dropped + self.pending()
        from mlflow.entities import Metric

        try:
            self._send([Metric(LOST_METRIC, float(lost), int(time.time() * 1000), 0)])
        except Exception as exc:  # the server is still away: the job's log keeps the count
            say(f"tracking: {lost} metrics lost, and their count could not be logged either ({_why(exc)})")
        if lost:
            say(f"tracking: {lost} metrics lost ({self.dropped} dropped from a full buffer), see {LOST_METRIC}")
        return lost

    # -- the background thread ------------------------------------------------------------------
    def _drop_overflow(self) -> None:
        """Drop the oldest buffered metrics beyond ``max_pending`` (caller holds the lock)."""
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped += 1

    def _run(self) -> None:
        backoff, down_since = 0.5, None
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return  # closing, and everything was sent
                self._inflight = [self._pending.popleft() for _ in range(min(BATCH_LIMIT, len(self._pending)))]
            try:
                self._send(self._inflight)
            except Exception as exc:  # down, restarting, refusing: keep the batch and try again later
                with self._cond:
                    self._pending.extendleft(reversed(self._inflight))
                    self._inflight = []
                    self._drop_overflow()
                if down_since is None:
                    down_since = time.monotonic()
                    say(f"tracking server unreachable ({_why(exc)}): buffering metrics, training goes on")
                if self._give_up.wait(backoff):
                    return
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            with self._cond:
                self._inflight = []
            if down_since is not None:
                say(f"tracking server back after {time.monotonic() - down_since:.0f}s: buffered metrics sent")
                backoff, down_since = 0.5, None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _sender(uri: str, run_id: str, client: Any, timeout_s: float) -> Callable[[list[Any]], None]:
    """A function sending a batch of metrics in one attempt (HTTP servers), or through ``client`` (others)."""
    if not uri.startswith(("http://", "https://")):
        return lambda batch: client.log_batch(run_id, metrics=batch)
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request_safe

    def send(batch: list[Any]) -> None:
        body = {
            "run_id": run_id,
            "metrics": [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in batch],
        }
        # one attempt, short time-out: the background thread does the retrying, with its own back-off
        http_request_safe(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/runs/log-batch",
            "POST",
            max_retries=0,
            timeout=timeout_s,
            json=body,
        )

    return send
