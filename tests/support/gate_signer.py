"""A signing hook that holds one reading task at a chosen chip, so that a test can kill it mid-epoch.

Registered as ``test_gate`` (tests/support/signing_hooks.py). A reading process calls it when it
opens a file of a plan row whose access names it. With ``$EOFORGE_TEST_GATE`` set to a folder
(a driver's ``runtime_env`` puts it into every worker of its job):

- the first call for an href containing the text of ``<folder>/victim`` creates ``<folder>/held``
  (exclusively) with its process id, then waits until ``<folder>/release`` exists (at most
  :data:`HOLD_S` seconds): that reading task is stuck mid-epoch, where the test can kill it;
- every other call (no ``victim`` yet, other hrefs, the retried task) returns at once.

The href comes back unchanged (``file://`` hrefs keep their query, which the reader ignores).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

GATE_ENV = "EOFORGE_TEST_GATE"
#: The longest a held reader waits for ``release`` (a test that died must not leave it stuck).
HOLD_S = 300.0


def gate_signer(href: str) -> str:
    """Hold the first caller until the gate is released (module docstring); returns ``href``."""
    folder = os.environ.get(GATE_ENV)
    victim = Path(folder) / "victim" if folder else None
    if victim is None or not victim.exists() or victim.read_text() not in href:
        return href
    try:
        fd = os.open(Path(folder) / "held", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return href  # held once already: pass
    with os.fdopen(fd, "w") as out:
        out.write(str(os.getpid()))
    deadline = time.monotonic() + HOLD_S
    while not (Path(folder) / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return href
