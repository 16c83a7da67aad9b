"""A builder of a published folder, run as its own process by tests/unit/test_published.py.

``python -m tests.support.published_builder FOLDER ME PEER MARKERS``: builds FOLDER with
:func:`eoforge.data.published.ensure_published`. Its build writes a first file, says it has
started (``MARKERS/ME``), waits until the PEER builder has started too (so both builds overlap),
writes a second file, then checks that its first file is still there. Prints the published
build's id as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from eoforge.data.published import ensure_published
from eoforge.storage import filesystem_of


def main(folder: str, me: str, peer: str, markers: str) -> None:
    def build(into: str) -> None:
        fs, path = filesystem_of(into)
        with fs.open_output_stream(f"{path}/part-0.bin") as out:
            out.write(f"{me} first\n".encode() * 1000)
        Path(markers, me).touch()
        deadline = time.monotonic() + 120
        while not Path(markers, peer).exists():  # the other builder is at work at the same time
            if time.monotonic() > deadline:
                raise SystemExit(f"{me}: builder {peer} never started")
            time.sleep(0.05)
        with fs.open_output_stream(f"{path}/part-1.bin") as out:
            out.write(f"{me} second\n".encode() * 1000)
        if fs.get_file_info(f"{path}/part-0.bin").type.name != "File":
            raise SystemExit(f"{me}: my first file was deleted while I was building")

    published = ensure_published(folder, "test cache", build, {"builder": me})
    print(json.dumps({"me": me, "build": published.build, "files": [f.path for f in published.files]}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
