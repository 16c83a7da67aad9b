"""Progress lines that reach the job log exactly once.

Inside Ray Train V2 workers, ``print`` is patched to go through Train's logger, and it also
tees to the original stream when a library (MLflow) has wrapped ``sys.stdout``: every line
then shows up twice in ``ray job logs``. :func:`say` writes to the process's real stdout,
which Ray forwards to the driver once. Lines are redacted (:func:`eoforge.redact.redact`).
"""

from __future__ import annotations

import sys

from eoforge.redact import redact


def say(message: str) -> None:
    """Write one progress line (prefixed ``[eoforge]``, redacted) to the real stdout and flush it."""
    stream = sys.__stdout__ or sys.stdout
    stream.write(f"[eoforge] {redact(message)}\n")
    stream.flush()
