"""A pickle that runs code when it is loaded: what the weights-only loaders must refuse without running it."""

from __future__ import annotations

from pathlib import Path


def plant(marker: str) -> str:
    """What the planted pickle calls when it is unpickled: leaves a file behind."""
    Path(marker).write_text("code ran")
    return marker


class Payload:
    """An object whose unpickling runs :func:`plant` (as ``os.system`` would run a command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return plant, (self.marker,)
