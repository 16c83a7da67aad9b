"""Published folders (the chip caches' commit protocol): manifest last, verified on open, builders apart.

Local disk and moto's S3 server (a real process on 127.0.0.1, see tests/support/s3.py); the
concurrent builders are two real processes (tests/support/published_builder.py) whose builds
overlap in time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eoforge.data.published import MANIFEST, ensure_published, open_published
from eoforge.errors import CacheIntegrityError, ChipReadError
from eoforge.storage import filesystem_of, s3_filesystem

from tests.support.s3 import aws_env

REPO = Path(__file__).resolve().parents[2]
BUCKET = "eoforge-caches"


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A cache folder on local disk, or in a bucket of the moto server."""
    if request.param == "local":
        return str(tmp_path / "caches" / "c1")
    endpoint = request.getfixturevalue("s3_server")
    aws_env(monkeypatch, endpoint, tmp_path, "test-secret-0123456789")
    s3_filesystem(allow_bucket_creation=True).create_dir(BUCKET)
    return f"s3://{BUCKET}/{tmp_path.name}/c1"


def _writer(files: dict[str, bytes], calls: list[str]):
    def build(into: str) -> None:
        calls.append(into)
        fs, path = filesystem_of(into)
        for name, data in files.items():
            with fs.open_output_stream(f"{path}/{name}") as out:
                out.write(data)

    return build


def _overwrite(uri: str, data: bytes) -> None:
    fs, path = filesystem_of(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def test_a_build_is_published_with_its_manifest_and_reused_when_it_verifies(where: str) -> None:
    calls: list[str] = []
    build = _writer({"a.parquet": b"x" * 1000, "b.parquet": b"y" * 10}, calls)
    first = ensure_published(where, "test cache", build, {"plan_hash": "abc"})
    assert len(calls) == 1 and calls[0].startswith(f"{where}/build-")
    assert [f.path.split("/", 1)[1] for f in first.files] == ["a.parquet", "b.parquet"]
    assert [f.size for f in first.files] == [1000, 10] and all(len(f.sha256) == 64 for f in first.files)
    again = ensure_published(where, "test cache", build, {"plan_hash": "abc"})
    assert len(calls) == 1 and again.build == first.build and again.meta == {"plan_hash": "abc"}
    assert open_published(where, checksums=True).uris() == [f"{where}/{f.path}" for f in first.files]


def test_a_folder_that_was_never_published_is_not_a_cache(where: str) -> None:
    _overwrite(f"{where}/stray.parquet", b"half-written")  # what a crashed builder of old left behind
    assert open_published(where) is None


def test_a_truncated_file_is_refused_by_name_and_rebuilt(where: str) -> None:
    calls: list[str] = []
    build = _writer({"a.parquet": b"x" * 1000}, calls)
    first = ensure_published(where, "test cache", build, {})
    victim = f"{where}/{first.files[0].path}"
    _overwrite(victim, b"x" * 400)
    with pytest.raises(CacheIntegrityError, match=rf"{first.files[0].path} has 400 bytes, {MANIFEST} says 1000"):
        open_published(where, "test cache")
    rebuilt = ensure_published(where, "test cache", build, {})
    assert len(calls) == 2 and rebuilt.build != first.build
    assert open_published(where, checksums=True).build == rebuilt.build


def test_an_altered_file_of_the_same_size_fails_its_checksum(where: str) -> None:
    calls: list[str] = []
    first = ensure_published(where, "test cache", _writer({"a.parquet": b"x" * 1000}, calls), {})
    _overwrite(f"{where}/{first.files[0].path}", b"z" * 1000)
    assert open_published(where, "test cache") is not None  # verified in this process: sizes only now
    with pytest.raises(CacheIntegrityError, match=rf"{first.files[0].path} does not match its sha256"):
        open_published(where, "test cache", checksums=True)
    with pytest.raises(CacheIntegrityError, match="does not match its sha256"):  # known bad: checked again
        open_published(where, "test cache")
    # a fresh process checks the checksums on its first open (this one verified the manifest already)
    probe = f"from eoforge.data.published import open_published; open_published({where!r}, 'test cache')"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode != 0 and "does not match its sha256" in done.stderr, done.stderr[-2000:]


def test_a_missing_file_or_a_broken_manifest_is_refused(where: str) -> None:
    first = ensure_published(where, "test cache", _writer({"a.parquet": b"x" * 10, "b.parquet": b"y"}, []), {})
    fs, path = filesystem_of(where)
    fs.delete_file(f"{path}/{first.files[1].path}")
    with pytest.raises(CacheIntegrityError, match=rf"{first.files[1].path} is listed in {MANIFEST} but missing"):
        open_published(where)
    _overwrite(f"{where}/{MANIFEST}", b'{"files": ')
    with pytest.raises(CacheIntegrityError, match=f"{MANIFEST} is unreadable"):
        open_published(where)


def test_a_failed_build_leaves_nothing_published(where: str) -> None:
    def failing(into: str) -> None:
        _writer({"a.parquet": b"x"}, [])(into)
        raise ChipReadError("no chip could be read")

    with pytest.raises(ChipReadError, match="no chip could be read"):
        ensure_published(where, "test cache", failing, {})
    assert open_published(where) is None
    fs, path = filesystem_of(where)
    import pyarrow.fs as pafs

    left = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    assert not [i.path for i in left if i.type == pafs.FileType.File]  # its build folder was removed


def test_a_build_folder_another_builder_has_only_just_made_is_kept(where: str) -> None:
    """A peer that has made its build folder but written nothing yet is at work, not stale (S3 gives no time)."""
    import pyarrow.fs as pafs

    fs, path = filesystem_of(where)
    fs.create_dir(f"{path}/build-just-begun", recursive=True)
    published = ensure_published(where, "test cache", _writer({"a.parquet": b"x"}, []), {})
    names = {i.path.rsplit("/", 1)[-1] for i in fs.get_file_info(pafs.FileSelector(path, recursive=False))}
    assert {"build-just-begun", published.build} <= names


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}


def test_two_concurrent_builders_both_succeed_and_the_published_cache_verifies(where: str, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.published_builder", where, me, peer, str(markers)],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, peer in (("one", "two"), ("two", "one"))
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]  # neither lost a file while building
        outs.append(json.loads(out.strip().splitlines()[-1]))
    published = open_published(where, "test cache", checksums=True)
    assert published is not None and published.meta["builder"] in ("one", "two")
    assert outs[1]["build"] == published.build or outs[0]["build"] == published.build
    fs, path = filesystem_of(f"{where}/{published.files[0].path}")
    with fs.open_input_stream(path) as stream:
        assert stream.read().startswith(f"{published.meta['builder']} first".encode())


def test_a_build_removes_only_stale_unreferenced_builds(tmp_path: Path) -> None:
    folder = tmp_path / "c1"
    crashed, working = folder / "build-crashed", folder / "build-at-work"
    for build in (crashed, working):
        build.mkdir(parents=True)
        (build / "a.parquet").write_bytes(b"x")
    day_ago = os.stat(crashed / "a.parquet").st_mtime - 2 * 24 * 3600
    os.utime(crashed / "a.parquet", (day_ago, day_ago))
    published = ensure_published(str(folder), "test cache", _writer({"a.parquet": b"y"}, []), {})
    assert not crashed.exists()  # a builder that died a day ago
    assert (working / "a.parquet").is_file()  # possibly another builder at work: kept
    assert (folder / published.build / "a.parquet").is_file()
