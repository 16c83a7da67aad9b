"""Where a planted secret could have been written: files under folders, and a Ray cluster's logs; plus a file server.

:func:`serve_folder` serves a folder over HTTP on 127.0.0.1 (a real server: GDAL reads from it as from
any object store's HTTPS endpoint, query strings ignored). :func:`files_containing` and
:func:`ray_logs_containing` look for the secret's bytes, in every file, binary ones included (MLflow's
SQLite database, Parquet caches, checkpoints).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on a free 127.0.0.1 port; yields its base URL; stops the server at the end."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def files_containing(roots: Iterable[Path], needle: str) -> tuple[list[str], int]:
    """(files under ``roots`` whose bytes contain ``needle``, number of files read)."""
    found, n = [], 0
    raw = needle.encode()
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
            n += 1
            try:
                data = path.read_bytes()
            except OSError:  # a socket or a file removed meanwhile
                continue
            if raw in data:
                found.append(str(path))
    return found, n


def ray_logs_containing(ray_address: str, needle: str) -> tuple[list[str], int]:
    """(log files of every node of the Ray cluster at ``ray_address`` whose text contains ``needle``, files read).

    Read through Ray's state API (the same files ``ray logs`` shows: raylet, GCS, dashboard, job
    drivers, every worker's .out and .err).
    """
    from ray.util.state import get_log, list_logs, list_nodes

    found, n = [], 0
    for node in list_nodes(address=ray_address):
        for names in list_logs(address=ray_address, node_id=node.node_id).values():
            for name in names:
                if name.endswith("/"):  # a folder
                    continue
                n += 1
                text = "".join(get_log(address=ray_address, node_id=node.node_id, filename=name, errors="replace"))
                if needle in text:
                    found.append(f"{node.node_ip}:{name}")
    return found, n
