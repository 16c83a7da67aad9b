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

Single files (chip plans) go through :func:`filesystem_of` with the same rules for ``s3://``
(endpoint and region from the environment), ``FileSystem.from_uri`` for the other schemes
pyarrow knows (``gs://``, ``hdfs://``, ``abfs://``...) and fsspec for the rest
(``memory://``...). :func:`file_exists` and :func:`storage_error` turn a missing bucket,
refused credentials or an unreachable endpoint into one-line errors that name the URI. Credentials
never go in a URI (they would reach logs and MLflow params): they come from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from eoforge.errors import ConfigError, EoforgeError, ServiceError

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


def _bucket_path(storage_path: str, what: str = "run.storage_path") -> str:
    url = urlparse(storage_path)
    if not url.netloc:
        raise ConfigError(f"{what}: {storage_path!r} has no bucket; expected {url.scheme}://bucket/prefix")
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


# --------------------------------------------------------------------------- single files (chip plans)
#: Query keys of a URI that would carry a secret (pyarrow's and fsspec's spellings).
SECRET_QUERY_KEYS = ("access_key", "secret_key", "session_token", "key", "secret", "token", "password")
#: Variables whose values never appear in an error message, whatever the storage library said.
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def is_remote(uri: str | Path) -> bool:
    """Whether ``uri`` names object storage or another remote filesystem (not a local path / file://)."""
    text = str(uri)
    return "://" in text and urlparse(text).scheme.lower() != "file"


def _check_no_credentials(uri: str, what: str) -> None:
    url = urlparse(uri)
    keys = {k.split("=", 1)[0].lower() for k in url.query.split("&") if k}
    # s3://KEY:SECRET@bucket and s3://KEY@bucket are credentials; hdfs://user@namenode is not
    user_is_key = url.username is not None and url.scheme.lower() in ("s3", "gs", "gcs")
    if url.password is not None or user_is_key or keys & set(SECRET_QUERY_KEYS):
        shown = f"{url.scheme}://{url.hostname or ''}{url.path}"
        raise ConfigError(
            f"{what}: {shown} carries credentials in the URI; put them in the environment instead "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, IRSA or Workload Identity), "
            "a URI ends up in logs and MLflow params"
        )


def filesystem_of(uri: str | Path, what: str = "path") -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem holding ``uri`` and the path inside it.

    - a local path or ``file://`` URL: ``(LocalFileSystem, absolute path)``;
    - ``s3://bucket/key``: ``(s3_filesystem(), "bucket/key")``, endpoint and region from the
      environment as for checkpoints (a URI with a query string, e.g. ``?region=eu-west-1``, is
      left to ``FileSystem.from_uri``, which reads its options from the query instead);
    - other schemes pyarrow knows (``gs://``, ``hdfs://``, ``abfs://``...): ``FileSystem.from_uri``;
    - anything else fsspec opens (``memory://``, or ``az://`` with adlfs installed...): the fsspec
      filesystem wrapped in ``pyarrow.fs.PyFileSystem``.

    Args:
        uri: the location.
        what: what it is, for error messages (a config field or "chip plan").

    Raises:
        ConfigError: credentials in the URI, no bucket, a bad endpoint, or a scheme neither
            pyarrow nor fsspec opens.
    """
    from pyarrow import fs as pafs

    text = str(uri)
    if not is_remote(text):
        local = urlparse(text).path if text.startswith("file://") else text
        return pafs.LocalFileSystem(), str(Path(local).expanduser().absolute())
    _check_no_credentials(text, what)
    url = urlparse(text)
    scheme = url.scheme.lower()
    if scheme == "s3" and not url.query:
        return s3_filesystem(), _bucket_path(text, what)
    if scheme in ("s3", "gs", "gcs") and not url.netloc:
        raise ConfigError(f"{what}: {text!r} has no bucket; expected {scheme}://bucket/key")
    try:
        return pafs.FileSystem.from_uri(text)
    except ValueError as exc:  # ArrowInvalid: a scheme pyarrow does not know
        arrow_reason = str(exc)
    except OSError as exc:
        raise storage_error(text, exc, what) from None
    try:
        import fsspec.core

        fs, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"{what}: cannot open {text!r}: {arrow_reason}; fsspec: {_scrub(str(exc))} "
            "(use a local path, s3://, gs://, or install the fsspec package of that scheme)"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _scrub(message: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    for name in SECRET_VARS:
        value = env.get(name, "")
        if len(value) >= 4:
            message = message.replace(value, f"<{name}>")
    return message


def _where(uri: str) -> str:
    """Which server an S3 URI goes to (no credentials in it); "" for other schemes."""
    if urlparse(uri).scheme.lower() != "s3":
        return ""
    endpoint = _first(os.environ, ENDPOINT_VARS)
    return f" at endpoint {endpoint}" if endpoint else " at the default AWS endpoint (AWS_ENDPOINT_URL not set)"


def storage_error(uri: str, exc: BaseException, what: str = "path", action: str = "access") -> EoforgeError:
    """A one-line error naming ``uri`` and what went wrong, from a storage library's exception.

    The library's message is kept (bucket, key, error code, request id) with any credential
    value from the environment masked; the hint says what to check.
    """
    raw = _scrub(str(exc))
    upper = raw.upper()
    where = _where(uri)
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
        reason = f"the bucket does not exist{where}"
    elif any(
        code in upper
        for code in ("ACCESS_DENIED", "ACCESSDENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "FORBIDDEN")
    ) or ("403" in upper and "HTTP" in upper):
        reason = (
            f"access denied{where}: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, IRSA or Workload Identity; values not shown)"
        )
    elif any(code in upper for code in ("NETWORK_CONNECTION", "COULDN'T CONNECT", "CURL", "COULD NOT RESOLVE")):
        reason = f"cannot connect to the store{where}"
    elif isinstance(exc, FileNotFoundError):
        reason = "not found"
    else:
        reason = f"cannot {action} it{where}" + ("; check the credentials and the endpoint" if is_remote(uri) else "")
    return ServiceError(f"{what} {uri}: {reason} ({raw})")


def _is_object_store(fs: pyarrow.fs.FileSystem) -> bool:
    return fs.type_name in ("s3", "gcs")


def check_bucket(uri: str, fs: pyarrow.fs.FileSystem, path: str, what: str = "path") -> None:
    """For object storage, fail clearly when the bucket of ``path`` does not exist (no-op elsewhere).

    Raises:
        ServiceError: the bucket does not exist (or these credentials cannot see it), or the
            store refused the question.
    """
    from pyarrow import fs as pafs

    if not _is_object_store(fs):
        return
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise storage_error(uri, exc, what) from None
    if info.type == pafs.FileType.NotFound:
        raise ServiceError(
            f"{what} {uri}: bucket {bucket!r} does not exist{_where(uri)} "
            "(or these credentials cannot see it); create it first, eoforge never creates buckets"
        )


def file_exists(uri: str | Path, what: str = "path") -> bool:
    """Whether ``uri`` is an existing file (local or remote, see :func:`filesystem_of`).

    A missing key in an existing bucket is ``False``; a missing bucket, refused credentials
    or an unreachable endpoint raise, since nothing could be written there either.

    Raises:
        ConfigError: see :func:`filesystem_of`; ``uri`` is a directory.
        ServiceError: see :func:`check_bucket`.
    """
    from pyarrow import fs as pafs

    fs, path = filesystem_of(uri, what)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise storage_error(str(uri), exc, what) from None
    if info.type == pafs.FileType.File:
        return True
    if info.type == pafs.FileType.Directory:
        raise ConfigError(f"{what}: {uri} is a directory, expected a file")
    check_bucket(str(uri), fs, path, what)
    return False
