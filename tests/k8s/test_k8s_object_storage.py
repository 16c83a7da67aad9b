"""resolve_storage: local paths, and a checkpoint round trip through a real S3-compatible server.

The S3 server is moto's (``moto.server.ThreadedMotoServer``) on 127.0.0.1: a real HTTP server
speaking the S3 protocol, reached by pyarrow's S3 client exactly as MinIO or AWS would be.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from eoforge.errors import ConfigError
from eoforge.storage import resolve_storage, s3_filesystem

from tests.support.s3 import AWS_VARS, free_port


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.fail(
            f"moto is not installed ({exc}); it is a test dependency: pip install 'moto[server]==5.2.5' "
            "(pyproject [project.optional-dependencies] test)"
        )
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_server


def _make_bucket(endpoint: str, bucket: str) -> None:
    req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _write_checkpoint(root: Path, step: int) -> dict[str, bytes]:
    """A checkpoint-like directory: a model state blob, optimizer state, and metadata."""
    files = {
        "model.pt": bytes(range(256)) * (64 + step),
        "optimizer.pt": b"\x00\x01" * 1000 * step,
        "meta/state.json": f'{{"step": {step}}}'.encode(),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


# --------------------------------------------------------------------------- local
def test_local_path_is_absolute_without_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_storage("ray_results") == (str(tmp_path / "ray_results"), None)
    assert resolve_storage(str(tmp_path / "x")) == (str(tmp_path / "x"), None)
    assert resolve_storage(f"file://{tmp_path}/y") == (str(tmp_path / "y"), None)


@pytest.mark.parametrize(
    ("uri", "match"),
    [("s3://", "has no bucket"), ("hdfs://nn/x", "not supported"), ("s3:///prefix", "has no bucket")],
)
def test_bad_storage_paths_are_config_errors(uri: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_storage(uri)


def test_bad_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected a URL like"):
        s3_filesystem({"AWS_ENDPOINT_URL": "minio:9000"})


def test_endpoint_and_region_come_from_env() -> None:
    fs = s3_filesystem({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert fs.region == "eu-west-1"
    assert "127.0.0.1:9" in repr(fs.__reduce__())  # endpoint_override travels with the pickled fs


# --------------------------------------------------------------------------- S3 (moto server)
def test_checkpoints_round_trip_through_s3(s3_env: str, tmp_path: Path) -> None:
    from pyarrow import fs as pafs

    _make_bucket(s3_env, "ckpt-bucket")
    path, fs = resolve_storage("s3://ckpt-bucket/runs/")
    assert path == "ckpt-bucket/runs"
    assert isinstance(fs, pafs.S3FileSystem)

    # What Ray Train does on a report: upload a local checkpoint directory under <storage>/<run>/.
    written = {}
    for step in (1, 2):
        local = tmp_path / f"local_ckpt_{step}"
        written[step] = _write_checkpoint(local, step)
        pafs.copy_files(str(local), f"{path}/exp/checkpoint_{step:06d}", destination_filesystem=fs)

    # What a rescheduled pod does: list the run's checkpoints, take the latest, download it.
    infos = fs.get_file_info(pafs.FileSelector(f"{path}/exp", recursive=False))
    dirs = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
    assert dirs == ["checkpoint_000001", "checkpoint_000002"]
    restored = tmp_path / "restored"
    pafs.copy_files(f"{path}/exp/{dirs[-1]}", str(restored), source_filesystem=fs)
    got = {p.relative_to(restored).as_posix(): p.read_bytes() for p in restored.rglob("*") if p.is_file()}
    assert got == written[2]

    # A fresh filesystem (new process, same env) sees the same objects.
    _, fs2 = resolve_storage("s3://ckpt-bucket/runs")
    assert fs2 is not None
    with fs2.open_input_stream(f"{path}/exp/checkpoint_000001/meta/state.json") as f:
        assert f.read() == b'{"step": 1}'


def test_missing_bucket_is_reported_by_s3(s3_env: str) -> None:
    import pyarrow as pa

    path, fs = resolve_storage("s3://no-such-bucket/x")
    assert fs is not None
    with pytest.raises((OSError, pa.ArrowException)), fs.open_output_stream(f"{path}/f") as out:
        out.write(b"x")


def test_bucket_creation_only_when_allowed(s3_env: str) -> None:
    from pyarrow import fs as pafs

    s3_filesystem(allow_bucket_creation=True).create_dir("made-by-setup")
    assert s3_filesystem().get_file_info("made-by-setup").type == pafs.FileType.Directory
