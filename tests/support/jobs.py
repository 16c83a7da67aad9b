"""Ray jobs as users submit them (`ray job submit --working-dir .`), through the job API."""

from __future__ import annotations

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENDED = {"SUCCEEDED", "FAILED", "STOPPED"}


def start_job(stack, entrypoint: str) -> str:
    """Submit `entrypoint` with the repository as working dir; returns the job id."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(stack.ray_dashboard_url).submit_job(
        entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)}
    )


def wait_job(stack, job: str, timeout_s: float = 900) -> str:
    """Poll the job until it ends (fails the test past `timeout_s`); returns its final status."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(stack.ray_dashboard_url)
    deadline = time.monotonic() + timeout_s
    while (status := str(client.get_job_status(job))) not in ENDED:
        assert time.monotonic() < deadline, f"job {job} did not finish in {timeout_s}s"
        time.sleep(2)
    return status


def run_job(stack, entrypoint: str, timeout_s: float = 900, expect_ok: bool = True) -> str:
    """Submit, wait, and return the job's logs; asserts success unless `expect_ok` is False."""
    from ray.job_submission import JobSubmissionClient

    job = start_job(stack, entrypoint)
    status = wait_job(stack, job, timeout_s)
    logs = JobSubmissionClient(stack.ray_dashboard_url).get_job_logs(job)
    if expect_ok:
        assert status == "SUCCEEDED", logs[-4000:]
    return logs
