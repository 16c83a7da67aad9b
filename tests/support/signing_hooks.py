"""The test signing hooks, registered the way a deployment registers its own: an installed entry point.

:func:`install_test_hooks` writes a minimal distribution (``*.dist-info`` with ``METADATA`` and
``entry_points.txt``, group ``eoforge.signing``) into a folder and puts the folder on ``sys.path``
and ``$PYTHONPATH``. ``importlib.metadata`` then finds the hooks in this process, and every process
started with this environment (the test stack's Ray head and its workers, CLI subprocesses) finds
them too. Nothing is mocked: the registry reads them as it reads any installed distribution.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The repository root: the hooks' module (``tests.support.provider_items``) is imported from it.
REPO = Path(__file__).resolve().parents[2]
#: Registered name -> ``module:function`` target.
TEST_HOOKS = {
    "test_recording": "tests.support.provider_items:recording_signer",
    "test_planted": "tests.support.provider_items:planted_signer",
    "test_gate": "tests.support.gate_signer:gate_signer",
}


def write_test_distribution(folder: Path, hooks: dict[str, str] = TEST_HOOKS, name: str = "eoforge_test_hooks") -> Path:
    """Write ``<folder>/<name>-0.dist-info`` registering ``hooks`` in group ``eoforge.signing``; returns ``folder``."""
    info = folder / f"{name}-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0\n")
    lines = ["[eoforge.signing]", *(f"{k} = {v}" for k, v in hooks.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return folder


def install_test_hooks(folder: Path) -> Path:
    """Write the test distribution into ``folder`` and put it on ``sys.path`` and ``$PYTHONPATH``.

    The repository root goes on ``$PYTHONPATH`` too, so that processes outside pytest (job drivers,
    Ray workers) import the hooks' module the way an installed distribution's module is imported.
    """
    write_test_distribution(folder)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    missing = [str(p) for p in (folder, REPO) if str(p) not in paths]
    if missing:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *missing])
    return folder
