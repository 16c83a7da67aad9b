"""Folders of files published whole: built under a unique prefix, committed by a manifest written last.

The chip cache (:func:`eoforge.data.chip_cache.ensure_chip_cache`, what pretraining's
materialised epochs and fine-tuning read) is a folder of Parquet files that many
processes read, on local disk or object storage, and that two jobs may build at the same time.
Nothing half-written may be read, and no builder may delete another's files. So a folder
``<cache>/`` is laid out as::

    <cache>/_MANIFEST.json          the commit point: which build, its files, sizes, sha256
    <cache>/build-<uuid>/...        one builder's files (a unique prefix per build)

- **Build**: each builder writes into its own ``build-<uuid>/`` (never touched by anyone else).
- **Publish**: the builder lists its files with their sizes and sha256 and writes
  ``_MANIFEST.json`` last, atomically: a temporary file in the same folder, fsync, ``os.replace``
  on a local disk; one object put on object storage (S3 and GCS make an object visible whole or
  not at all). A builder that finds a valid manifest already published when it is done adopts
  that one and deletes its own build (never referenced, so nobody reads it).
- **Open**: readers read only the files the manifest lists. Sizes are checked on every open
  (one listing); sha256 on the first open of a manifest in a process (:func:`open_published`):
  0.56 s for 512 MB from the page cache on one core (0.3 ms for sizes only), and on object
  storage a download of the files once per process. A mismatch raises
  :class:`~eoforge.errors.CacheIntegrityError` naming the file; the ``ensure_*`` functions
  rebuild instead of trusting it.

Residual cases, by design: two builders that both finish before either sees the other's
manifest both publish; the last put wins, and both manifests are complete and valid, so a
reader gets one or the other whole. The loser's build is then no longer referenced; it is left
in place (a reader may hold the loser's manifest) and removed by a later build once no file in it
has changed for :data:`STALE_BUILD_S` (also what cleans up after a builder that crashed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eoforge.errors import CacheIntegrityError, ChipReadError
from eoforge.progress import say
from eoforge.storage import filesystem_of

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
FORMAT = "eoforge-manifest/1"
BUILD_PREFIX = "build-"
#: An unreferenced build folder with no file changed for this long (seconds) is removed by the next build.
STALE_BUILD_S = 24 * 3600
_CHUNK = 8 << 20


@dataclass(frozen=True)
class PublishedFile:
    """One file of a published folder: ``path`` relative to the folder, ``size`` bytes, ``sha256`` hex."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Published:
    """A verified published folder: its filesystem, its path there, and its manifest.

    Attributes:
        uri: the folder as given (local path or URI).
        fs: the pyarrow filesystem holding it; root: the folder's path in ``fs``.
        build: the build folder the manifest commits; files: its files; meta: what the builder recorded.
    """

    uri: str
    fs: Any
    root: str
    build: str
    files: tuple[PublishedFile, ...]
    meta: dict[str, Any]

    def paths(self) -> list[str]:
        """The files' paths in :attr:`fs` (for pyarrow readers given ``fs``)."""
        return [f"{self.root}/{f.path}" for f in self.files]

    def uris(self) -> list[str]:
        """The files as local paths or URIs, in the form of :attr:`uri` (for Ray Data readers)."""
        return [f"{self.uri.rstrip('/')}/{f.path}" for f in self.files]


def _sha256(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(fs: Any, root: str, uri: str, what: str) -> tuple[dict[str, Any], str] | None:
    """The manifest as JSON and its sha256, or None when there is none."""
    import pyarrow.fs as pafs

    path = f"{root}/{MANIFEST}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        raw = stream.read()
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or not isinstance(doc.get("files"), list):
            raise ValueError(f"not an {FORMAT} manifest")
    except ValueError as exc:
        raise CacheIntegrityError(f"{what} {uri}: {MANIFEST} is unreadable ({exc})") from None
    return doc, hashlib.sha256(raw).hexdigest()


#: (uri, manifest sha256) of the manifests whose checksums this process has verified.
_VERIFIED: set[tuple[str, str]] = set()


def open_published(uri: str, what: str = "cache", checksums: bool | None = None) -> Published | None:
    """The published folder ``uri`` after checking its files against its manifest; None when unpublished.

    Args:
        uri: the folder (local path or URI).
        what: what it is, for messages ("chip cache", "materialised plan").
        checksums: verify sha256 (True), only sizes (False), or sha256 on the first open of this
            manifest in this process and sizes afterwards (None, the default).

    Raises:
        CacheIntegrityError: the manifest is unreadable, or a listed file is missing, has another
            size, or another sha256; the message names the file.
    """
    fs, root = filesystem_of(uri, what)
    found = _read_manifest(fs, root, uri, what)
    if found is None:
        return None
    doc, manifest_sha = found
    key = (uri, manifest_sha)
    try:
        files = _check(fs, root, uri, what, doc, checksums or (checksums is None and key not in _VERIFIED))
    except CacheIntegrityError:
        _VERIFIED.discard(key)  # known bad in this process: never trusted on sizes alone again
        raise
    if checksums is not False:
        _VERIFIED.add(key)
    return Published(uri, fs, root, str(doc["build"]), files, dict(doc.get("meta") or {}))


def _check(fs: Any, root: str, uri: str, what: str, doc: dict[str, Any], checksums: bool) -> tuple[PublishedFile, ...]:
    """The manifest's files, after checking that each exists with its size (and its sha256 if ``checksums``)."""
    import pyarrow.fs as pafs

    files = tuple(PublishedFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"])
    infos = fs.get_file_info([f"{root}/{f.path}" for f in files])
    for f, info in zip(files, infos, strict=True):
        if info.type != pafs.FileType.File:
            raise CacheIntegrityError(f"{what} {uri}: {f.path} is listed in {MANIFEST} but missing")
        if info.size != f.size:
            raise CacheIntegrityError(
                f"{what} {uri}: {f.path} has {info.size} bytes, {MANIFEST} says {f.size} (truncated or rewritten)"
            )
    if checksums:
        for f in files:
            if _sha256(fs, f"{root}/{f.path}") != f.sha256:
                raise CacheIntegrityError(f"{what} {uri}: {f.path} does not match its sha256 in {MANIFEST} (altered)")
    return files


def _list_files(fs: Any, root: str, build: str) -> list[PublishedFile]:
    import pyarrow.fs as pafs

    base = f"{root}/{build}"
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = []
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        rel = info.path[len(root) + 1 :]
        out.append(PublishedFile(rel, int(info.size), _sha256(fs, info.path)))
    return out


def _write_manifest(fs: Any, root: str, doc: dict[str, Any]) -> None:
    """Write ``_MANIFEST.json`` atomically: temp file + fsync + os.replace locally, one object put elsewhere."""
    data = json.dumps(doc, indent=1).encode()
    final = f"{root}/{MANIFEST}"
    if fs.type_name == "local":
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        dir_fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return
    with fs.open_output_stream(final) as out:  # S3/GCS: the object appears whole when the stream closes
        out.write(data)


def _trusted(uri: str, what: str) -> Published | None:
    """The published folder if its manifest verifies; None (after saying why) when it does not or is absent."""
    try:
        return open_published(uri, what)
    except CacheIntegrityError as exc:
        say(f"{exc}: not trusted, building it again")
        return None


def _remove_stale_builds(fs: Any, root: str, keep: set[str]) -> None:
    """Delete build folders not in ``keep`` whose newest file is older than :data:`STALE_BUILD_S`."""
    import pyarrow.fs as pafs

    now = time.time()
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type != pafs.FileType.Directory or not name.startswith(BUILD_PREFIX) or name in keep:
            continue
        inner = fs.get_file_info(pafs.FileSelector(info.path, recursive=True, allow_not_found=True))
        times = [i.mtime.timestamp() for i in inner if i.mtime is not None]
        times = times or ([info.mtime.timestamp()] if info.mtime is not None else [])  # an empty build: its own time
        if not times or now - max(times) < STALE_BUILD_S:
            continue  # possibly another builder at work (or one that has not written yet: an S3 prefix has no time)
        log.info("removing stale unpublished build %s/%s", root, name)
        try:
            fs.delete_dir(info.path)
        except FileNotFoundError:  # another builder removed it first (its own, or the same stale one)
            log.info("stale build %s/%s was already removed", root, name)


def ensure_published(uri: str, what: str, build: Callable[[str], None], meta: dict[str, Any]) -> Published:
    """The folder ``uri`` published: reused if its manifest verifies, else built by ``build`` and published.

    Args:
        uri: the folder (local path or URI).
        what: what it is, for messages.
        build: writes the files into the folder it is given (a fresh ``<uri>/build-<uuid>``).
        meta: recorded in the manifest (plan hash, normalisation...).

    Returns:
        The verified published folder (ours, or another builder's that was published first).
    """
    current = _trusted(uri, what)
    if current is not None:
        log.info("%s %s is published and verified: reusing it", what, uri)
        return current
    fs, root = filesystem_of(uri, what)
    build_id = f"{BUILD_PREFIX}{uuid.uuid4().hex}"
    fs.create_dir(f"{root}/{build_id}", recursive=True)
    try:
        build(f"{uri.rstrip('/')}/{build_id}")
        files = _list_files(fs, root, build_id)
    except BaseException:
        fs.delete_dir(f"{root}/{build_id}")
        raise
    published_first = _trusted(uri, what)
    if published_first is not None:  # another builder finished first: theirs, ours was never referenced
        say(f"{what} {uri}: another builder published it first; using theirs")
        fs.delete_dir(f"{root}/{build_id}")
        return published_first
    doc = {
        "format": FORMAT,
        "build": build_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "meta": meta,
        "files": [vars(f) for f in files],
    }
    _write_manifest(fs, root, doc)
    result = open_published(uri, what, checksums=False)  # re-read: the last put wins
    if result is None:
        raise ChipReadError(f"{what} {uri}: {MANIFEST} vanished right after it was written")
    if result.build != build_id:
        say(f"{what} {uri}: another builder published at the same time; its build {result.build} is the one used")
    else:
        _VERIFIED.add((uri, hashlib.sha256(json.dumps(doc, indent=1).encode()).hexdigest()))
    _remove_stale_builds(fs, root, keep={build_id, result.build})
    return result
