"""Where checkpoints live: a local directory or object storage, as a pyarrow filesystem.

``resolve_storage(run.storage_path)`` gives what ``ray.train.RunConfig(storage_path=...,
storage_filesystem=...)`` takes:

- a local path (or ``file://`` URL): ``(absolute path, None)``; Ray uses the local disk. Fine
  on one machine; a multi-node cluster needs shared storage.
- ``s3://bucket/prefix``: ``("bucket/prefix", pyarrow.fs.S3FileSystem)``. The endpoint and
  region come from the environment, so the same config works on AWS S3, on GCS's
  S3-compatible endpoint and on MinIO: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
  (e.g. ``http://minio.eoforge.svc:9000``), ``AWS_REGION`` or ``AWS_DEFAULT_REGION``.
  Credentials follow the AWS default chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  IRSA web identity, instance profile).
- ``gs://bucket/prefix``: ``("bucket/prefix", pyarrow.fs.GcsFileSystem)`` with Google default
  credentials (Workload Identity on GKE).

Because a rescheduled pod sees the same bucket, rerunning a job with the same
``(storage_path, name)`` resumes from its last checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from eoforge.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow.fs

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def s3_filesystem(env: Mapping[str, str] | None = None, allow_bucket_creation: bool = False) -> pyarrow.fs.S3FileSystem:
    """A pyarrow S3 filesystem configured from the environment (endpoint, region).

    Args:
        env: Variables to read (default: ``os.environ``).
        allow_bucket_creation: Let ``create_dir("bucket")`` create buckets (setup jobs only).

    Raises:
        ConfigError: the endpoint variable is not an ``http(s)://host[:port]`` URL.
    """
    from pyarrow import fs as pafs

    env = os.environ if env is None else env
    kwargs: dict[str, object] = {"allow_bucket_creation": allow_bucket_creation}
    endpoint = _first(env, ENDPOINT_VARS)
    if endpoint:
        url = urlparse(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(
                f"S3 endpoint {endpoint!r} (from ${'/$'.join(ENDPOINT_VARS)}): expected a URL like "
                "http://minio:9000 or https://storage.googleapis.com"
            )
        kwargs["endpoint_override"] = url.netloc
        kwargs["scheme"] = url.scheme
    region = _first(env, REGION_VARS)
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _bucket_path(storage_path: str) -> str:
    url = urlparse(storage_path)
    if not url.netloc:
        raise ConfigError(f"run.storage_path: {storage_path!r} has no bucket; expected {url.scheme}://bucket/prefix")
    prefix = url.path.strip("/")
    return f"{url.netloc}/{prefix}" if prefix else url.netloc


def resolve_storage(storage_path: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Split a ``run.storage_path`` into (path for Ray, pyarrow filesystem or None).

    Args:
        storage_path: A local directory, ``file://`` URL, ``s3://bucket/prefix`` or
            ``gs://bucket/prefix``.

    Returns:
        ``(absolute local path, None)`` for local storage; ``("bucket/prefix", filesystem)``
        for object storage (Ray wants the path without the scheme when given a filesystem).

    Raises:
        ConfigError: an unsupported scheme, a URL without a bucket, or a bad endpoint.
    """
    scheme = urlparse(storage_path).scheme.lower() if "://" in storage_path else ""
    if scheme in ("", "file"):
        local = urlparse(storage_path).path if scheme == "file" else storage_path
        return str(Path(local).expanduser().absolute()), None
    if scheme == "s3":
        return _bucket_path(storage_path), s3_filesystem()
    if scheme in ("gs", "gcs"):
        from pyarrow import fs as pafs

        return _bucket_path(storage_path), pafs.GcsFileSystem()
    raise ConfigError(
        f"run.storage_path: scheme {scheme!r} of {storage_path!r} is not supported; "
        "use a local directory, s3://bucket/prefix or gs://bucket/prefix"
    )
