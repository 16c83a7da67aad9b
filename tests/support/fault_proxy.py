"""A real HTTP proxy that injects faults, for testing the STAC search retries.

Run as its own process (``start_fault_proxy`` does it, stopped by PID)::

    python tests/support/fault_proxy.py --upstream http://127.0.0.1:8081 --rate 0.2 --seed 0

It listens on a free 127.0.0.1 port (printed as ``PORT <n>`` on stdout once listening) and
forwards every request to ``--upstream`` with the client's ``Host`` header unchanged, so a
stac-fastapi server behind it writes its links (``self``, ``next`` page tokens) with the proxy's
address and the client keeps coming back through the proxy.

A seeded draw per request (in arrival order) fails ``--rate`` of them; the kinds of fault take
turns (the k-th injected fault is ``faults[k % len(faults)]``):

- ``500`` / ``502`` / ``503``: that status with a small JSON body, nothing forwarded;
- ``timeout``: nothing is answered for ``--hold-s`` seconds (longer than the client's time-out),
  then the connection is closed;
- ``truncated``: the upstream answer's status and headers (full ``Content-Length``), half of the
  body, then the connection is closed (a reset mid-body).

``GET /_proxy/health`` and ``GET /_proxy/stats`` are never faulted; stats are JSON:
``{"requests": n, "forwarded": n, "injected": {"500": n, ...}, "injected_total": n}``.
``--path-prefix /search`` limits the faults to requests whose path starts with it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FAULTS = ("500", "502", "503", "timeout", "truncated")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


class FaultState:
    """The seeded fault schedule and the counters, shared by the handler threads."""

    def __init__(self, rate: float, seed: int, faults: tuple[str, ...], hold_s: float, path_prefix: str) -> None:
        self.rate, self.faults, self.hold_s, self.path_prefix = rate, faults, hold_s, path_prefix
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.stats: dict[str, Any] = {"requests": 0, "forwarded": 0, "injected": dict.fromkeys(faults, 0)}

    def draw(self, path: str) -> str | None:
        """The fault for the next request (None: forward it as it is)."""
        with self._lock:
            self.stats["requests"] += 1
            if not path.startswith(self.path_prefix) or self._rng.random() >= self.rate:
                self.stats["forwarded"] += 1
                return None
            injected = self.stats["injected"]
            kind = self.faults[sum(injected.values()) % len(self.faults)]
            injected[kind] += 1
            return kind

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-able data."""
        with self._lock:
            out = json.loads(json.dumps(self.stats))
        out["injected_total"] = sum(out["injected"].values())
        return out


def make_handler(upstream: str, state: FaultState) -> type[BaseHTTPRequestHandler]:
    """The request handler class forwarding to ``upstream`` (``http://host:port``)."""
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
            self.send_response(status)
            for key, value in headers or [("Content-Type", "application/json")]:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=120)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                return resp.status, kept, data
            finally:
                conn.close()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if self.path.startswith("/_proxy/"):
                if self.path == "/_proxy/health":
                    self._reply(200, b'{"ok": true}')
                elif self.path == "/_proxy/stats":
                    self._reply(200, json.dumps(state.snapshot()).encode())
                else:
                    self._reply(404, b'{"error": "unknown proxy endpoint"}')
                return
            fault = state.draw(self.path)
            if fault is None:
                status, headers, data = self._forward(body)
                self._reply(status, data, headers)
            elif fault == "timeout":
                state.stopping.wait(state.hold_s)
                self.close_connection = True
            elif fault == "truncated":
                status, headers, data = self._forward(body)
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                msg = {"code": "InjectedFault", "description": f"fault_proxy injected HTTP {fault}"}
                self._reply(int(fault), json.dumps(msg).encode())

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until terminated."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="http://host:port of the server behind the proxy")
    ap.add_argument("--rate", type=float, default=0.2, help="fraction of requests that fail")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hold-s", type=float, default=5.0, help="how long a 'timeout' fault holds, seconds")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated kinds among {FAULTS}")
    ap.add_argument("--path-prefix", default="/", help="inject faults only on paths starting with this")
    args = ap.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        ap.error(f"--faults: unknown kinds {unknown}; choose among {FAULTS}")
    state = FaultState(args.rate, args.seed, faults, args.hold_s, args.path_prefix)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args.upstream, state))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        state.stopping.set()
        server.server_close()


@dataclass
class FaultProxy:
    """A running fault proxy process; ``url`` is its root."""

    url: str
    proc: subprocess.Popen[bytes]

    def stats(self) -> dict[str, Any]:
        """The proxy's counters (``GET /_proxy/stats``)."""
        import requests

        return requests.get(f"{self.url}/_proxy/stats", timeout=10).json()

    def stop(self) -> None:
        """Terminate the process (by PID) and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def start_fault_proxy(
    upstream: str,
    *,
    rate: float,
    seed: int = 0,
    hold_s: float = 5.0,
    faults: tuple[str, ...] = FAULTS,
    path_prefix: str = "/",
    deadline_s: float = 30.0,
) -> FaultProxy:
    """Start ``fault_proxy.py`` in front of ``upstream``; returns once it answers ``/_proxy/health``."""
    import requests

    cmd = [sys.executable, str(Path(__file__).resolve()), "--upstream", upstream, "--rate", str(rate)]
    cmd += ["--seed", str(seed), "--hold-s", str(hold_s), "--faults", ",".join(faults), "--path-prefix", path_prefix]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + deadline_s
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                proc.kill()
                raise RuntimeError(f"fault proxy did not report its port within {deadline_s:g} s")
            chunk = proc.stdout.read1(256)  # type: ignore[attr-defined]
            if not chunk:
                raise RuntimeError(f"fault proxy exited with code {proc.wait()} before listening")
            line += chunk
    proxy = FaultProxy(f"http://127.0.0.1:{int(line.split()[1])}", proc)
    # the socket listens since the port was printed: this request waits in the backlog if need be
    if not requests.get(f"{proxy.url}/_proxy/health", timeout=max(1.0, deadline - time.monotonic())).ok:
        proxy.stop()
        raise RuntimeError("fault proxy health check failed")
    return proxy


if __name__ == "__main__":
    main()
