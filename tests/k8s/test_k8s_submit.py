"""eoforge.k8s.client / `eoforge k8s submit|status|logs`, checked up to the HTTP boundary.

The kubernetes client talks, through a kubeconfig written here, to a small HTTP server on
127.0.0.1 that records each request and answers as the API server does (201 with the object,
404 when the ray.io group is not served, 403 Status objects, ...).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from eoforge.errors import ServiceError
from eoforge.k8s.cli import app
from eoforge.k8s.client import api_client, get_rayjob, stream_logs, submit, wait_for
from eoforge.k8s.render import RenderedJob, render_job
from typer.testing import CliRunner

from tests.k8s.helpers import ROOT

RAYJOBS = "/apis/ray.io/v1/namespaces/{ns}/rayjobs"
CONFIGMAPS = "/api/v1/namespaces/{ns}/configmaps"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


Reply = tuple[int, Any]  # (status, JSON-able object or bytes)


def status_obj(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def happy_cluster(req: Request) -> Reply:
    """What a cluster with KubeRay installed and the eoforge namespace answers."""
    if req.method == "POST":
        obj = dict(req.body)
        obj["metadata"] = {**obj["metadata"], "uid": "0000-1111", "creationTimestamp": "2026-01-01T00:00:00Z"}
        return 201, obj
    if req.path.endswith("/pods"):
        pod = {
            "metadata": {
                "name": "eoforge-pretrain-example-x7k2p",
                "creationTimestamp": "2026-01-01T00:00:05Z",
            }
        }
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]}
    if req.path.endswith("/log"):
        return 200, b"[eoforge] MLflow run started\nstep 1 loss 4.2\n"
    if "/rayjobs/" in req.path:
        name = req.path.rsplit("/", 1)[1]
        return 200, {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": name, "namespace": "eoforge"},
            "status": {
                "jobDeploymentStatus": "Running",
                "jobStatus": "RUNNING",
                "rayClusterName": f"{name}-abcde",
                "dashboardURL": f"{name}-abcde-head-svc:8265",
            },
        }
    return 404, status_obj(404, "NotFound", "not handled by the fake")


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Request] = []
        self.respond: Callable[[Request], Reply] = happy_cluster

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def _handle(self) -> None:
        url = urlparse(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else None
        req = Request(
            self.command, url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()}, body
        )
        self.server.requests.append(req)
        status, reply = self.server.respond(req)
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(reply, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "alice", "user": {"token": "test-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "alice"}}],
            }
        )
    )
    return path


@pytest.fixture
def kubeconfig(api_server: FakeApiServer, tmp_path: Path) -> str:
    return str(write_kubeconfig(tmp_path / "kubeconfig", api_server.url))


@pytest.fixture(scope="module")
def job() -> RenderedJob:
    return render_job(ROOT / "configs/pretrain/cluster-example.yaml", "gke", ROOT)


# --------------------------------------------------------------------------- submit
def test_submit_posts_configmaps_then_the_rayjob(api_server: FakeApiServer, kubeconfig: str, job: RenderedJob) -> None:
    created = submit(job, api_client(kubeconfig))

    reqs = api_server.requests
    assert [(r.method, r.path) for r in reqs] == [
        *[("POST", CONFIGMAPS.format(ns="eoforge"))] * len(job.configmaps),
        ("POST", RAYJOBS.format(ns="eoforge")),
    ]
    assert [r.body for r in reqs[:-1]] == job.configmaps
    assert reqs[-1].body == job.rayjob  # exactly the rendered object, as JSON
    for r in reqs:
        assert r.headers["authorization"] == "Bearer test-token"
        assert r.headers["content-type"] == "application/json"
    assert created["metadata"]["uid"] == "0000-1111"


def test_submit_to_another_namespace(api_server: FakeApiServer, kubeconfig: str, job: RenderedJob) -> None:
    submit(job, api_client(kubeconfig), namespace="team-a")
    assert {r.path for r in api_server.requests} == {
        CONFIGMAPS.format(ns="team-a"),
        RAYJOBS.format(ns="team-a"),
    }
    assert all(r.body["metadata"]["namespace"] == "team-a" for r in api_server.requests)
    assert job.rayjob["metadata"]["namespace"] == "eoforge"  # the rendered object is not modified


def test_existing_configmaps_are_fine(api_server: FakeApiServer, kubeconfig: str, job: RenderedJob) -> None:
    def respond(req: Request) -> Reply:
        if req.path.endswith("/configmaps"):
            return 409, status_obj(409, "AlreadyExists", f'configmaps "{req.body["metadata"]["name"]}" already exists')
        return happy_cluster(req)

    api_server.respond = respond
    submit(job, api_client(kubeconfig))
    assert api_server.requests[-1].path == RAYJOBS.format(ns="eoforge")


def test_missing_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServiceError, match=r"no kubeconfig at .*nope.*get-credentials.*--kubeconfig"):
        api_client(str(tmp_path / "nope"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ServiceError, match=r"no kubeconfig at ~/.kube/config"):
        api_client()


def test_unknown_context(kubeconfig: str) -> None:
    with pytest.raises(ServiceError, match=r"cannot use kubeconfig .*context 'prod'"):
        api_client(kubeconfig, context="prod")


def test_missing_crd_says_install_kuberay(api_server: FakeApiServer, kubeconfig: str, job: RenderedJob) -> None:
    def respond(req: Request) -> Reply:
        if req.path.startswith("/apis/ray.io/"):
            return 404, b"404 page not found\n"  # the API server's answer for a group it does not serve
        return happy_cluster(req)

    api_server.respond = respond
    with pytest.raises(ServiceError, match=r"does not serve ray.io/v1 RayJobs; install the KubeRay operator: helm"):
        submit(job, api_client(kubeconfig))


def test_forbidden_namespace(api_server: FakeApiServer, kubeconfig: str, job: RenderedJob) -> None:
    message = 'configmaps is forbidden: User "alice" cannot create resource "configmaps" in the namespace "prod"'
    api_server.respond = lambda req: (403, status_obj(403, "Forbidden", message, {"kind": "configmaps"}))
    with pytest.raises(ServiceError) as err:
        submit(job, api_client(kubeconfig), namespace="prod")
    text = str(err.value)
    assert "namespace 'prod': forbidden" in text and 'User "alice"' in text and "eoforge-submitter" in text
    assert len(api_server.requests) == 1  # stops at the first refusal


def test_missing_namespace(api_server: FakeApiServer, kubeconfig: str, job: RenderedJob) -> None:
    api_server.respond = lambda req: (
        404,
        status_obj(404, "NotFound", 'namespaces "nope" not found', {"name": "nope", "kind": "namespaces"}),
    )
    with pytest.raises(ServiceError, match=r"namespace 'nope' does not exist; apply the manifests first"):
        submit(job, api_client(kubeconfig), namespace="nope")


def test_name_taken(api_server: FakeApiServer, kubeconfig: str, job: RenderedJob) -> None:
    def respond(req: Request) -> Reply:
        if req.path.endswith("/rayjobs"):
            return 409, status_obj(409, "AlreadyExists", "rayjobs.ray.io exists", {"kind": "rayjobs"})
        return happy_cluster(req)

    api_server.respond = respond
    with pytest.raises(
        ServiceError, match=r"already exists.*kubectl -n eoforge delete rayjob eoforge-pretrain-example"
    ):
        submit(job, api_client(kubeconfig))


def test_unreachable_api_server(tmp_path: Path, job: RenderedJob) -> None:
    closed = FakeApiServer()
    url = closed.url
    closed.server_close()
    api = api_client(str(write_kubeconfig(tmp_path / "kc", url)))
    api.configuration.retries = 0
    with pytest.raises(ServiceError, match="cannot reach the API server"):
        submit(job, api)


# --------------------------------------------------------------------------- status and logs
def test_status_reads_the_rayjob(api_server: FakeApiServer, kubeconfig: str) -> None:
    obj = get_rayjob(api_client(kubeconfig), "eoforge-pretrain-example", "eoforge")
    assert obj["status"]["jobDeploymentStatus"] == "Running"
    assert api_server.requests[0].path == RAYJOBS.format(ns="eoforge") + "/eoforge-pretrain-example"


def test_status_of_an_unknown_job(api_server: FakeApiServer, kubeconfig: str) -> None:
    api_server.respond = lambda req: (
        404,
        status_obj(
            404,
            "NotFound",
            'rayjobs.ray.io "x" not found',
            {"name": "x", "group": "ray.io", "kind": "rayjobs"},
        ),
    )
    with pytest.raises(ServiceError, match=r"RayJob eoforge/x not found"):
        get_rayjob(api_client(kubeconfig), "x", "eoforge")


def test_wait_follows_until_terminal(api_server: FakeApiServer, kubeconfig: str) -> None:
    states = iter([("Initializing", ""), ("Running", "RUNNING"), ("Running", "RUNNING"), ("Complete", "SUCCEEDED")])

    def respond(req: Request) -> Reply:
        deployment, job_status = next(states)
        return 200, {
            "metadata": {"name": "j", "namespace": "eoforge"},
            "status": {"jobDeploymentStatus": deployment, "jobStatus": job_status},
        }

    api_server.respond = respond
    seen: list[str] = []
    final = wait_for(api_client(kubeconfig), "j", "eoforge", 60, lambda s: seen.append(s["deployment"]), poll_s=0)
    assert seen == ["Initializing", "Running", "Complete"] and final["job"] == "SUCCEEDED"


def test_logs_stream_the_submitter_pod(api_server: FakeApiServer, kubeconfig: str) -> None:
    out: list[str] = []
    pod = stream_logs(api_client(kubeconfig), "eoforge-pretrain-example", "eoforge", out.append)
    assert pod == "eoforge-pretrain-example-x7k2p"
    assert "".join(out) == "[eoforge] MLflow run started\nstep 1 loss 4.2\n"
    listing, log = api_server.requests
    assert listing.path == "/api/v1/namespaces/eoforge/pods"
    assert listing.query["labelSelector"] == ["batch.kubernetes.io/job-name=eoforge-pretrain-example"]
    assert log.path == f"/api/v1/namespaces/eoforge/pods/{pod}/log" and log.query["follow"] == ["true"]


def test_logs_before_the_submitter_exists(api_server: FakeApiServer, kubeconfig: str) -> None:
    def respond(req: Request) -> Reply:
        if req.path.endswith("/pods"):
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}
        return happy_cluster(req)

    api_server.respond = respond
    with pytest.raises(ServiceError, match=r"\(Running\): no submitter pod yet"):
        stream_logs(api_client(kubeconfig), "eoforge-pretrain-example", "eoforge", print)


# --------------------------------------------------------------------------- the eoforge command
def test_cli_submit_status_logs(api_server: FakeApiServer, kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    runner = CliRunner()
    config = "configs/pretrain/cluster-example.yaml"
    result = runner.invoke(app, ["submit", "--config", config, "--overlay", "gke", "--kubeconfig", kubeconfig])
    assert result.exit_code == 0, result.output
    assert "created RayJob eoforge/eoforge-pretrain-example" in result.output
    assert api_server.requests[-1].body["spec"]["entrypoint"].endswith(config)

    result = runner.invoke(app, ["status", "eoforge-pretrain-example", "--kubeconfig", kubeconfig, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deployment"] == "Running"

    result = runner.invoke(app, ["logs", "eoforge-pretrain-example", "--kubeconfig", kubeconfig])
    assert result.exit_code == 0, result.output
    assert "step 1 loss 4.2" in result.output


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "eoforge"
    proc = subprocess.run(
        [str(exe), "k8s", "status", "x", "--kubeconfig", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: Kubernetes: no kubeconfig")
