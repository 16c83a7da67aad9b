"""Chip plans in object storage: the demo plan written to ``s3://`` and to a local file (no Ray).

The S3 server is moto's, started as its own process (``python -m moto.server``) on 127.0.0.1
and stopped by PID: a real HTTP server speaking the S3 protocol, reached by pyarrow's S3
client exactly as MinIO or AWS would be (endpoint from ``AWS_ENDPOINT_URL``). A second one
runs with authentication on (``INITIAL_NO_AUTH_ACTION_COUNT=0``), so every key is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from eoforge.cli import app
from eoforge.config import DataConfig, PretrainConfig, check_inputs, load_config
from eoforge.demo.catalog import write_demo_catalog
from eoforge.errors import CatalogError, ConfigError, ServiceError
from eoforge.plan.build import plan_rows_with_stats
from eoforge.plan.io import build_plan, plan_exists, plan_stats, read_plan, read_stream_table, stored_hash, write_plan
from eoforge.storage import filesystem_of, s3_filesystem
from geopandas.testing import assert_geodataframe_equal
from typer.testing import CliRunner

from tests.support.s3 import aws_env, free_port, moto_server

REPO = Path(__file__).resolve().parents[2]
BUCKET = "eoforge-plans"
SECRET = "sEcReT-never-shown-0123456789"


@pytest.fixture(scope="module")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from moto_server(tmp_path_factory.mktemp("moto-auth") / "server.log", auth=True)


def _aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp: Path) -> None:
    aws_env(monkeypatch, endpoint, tmp, SECRET)


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The AWS environment pointing at the moto server, with the plans bucket created."""
    _aws_env(monkeypatch, s3_server, tmp_path)
    s3_filesystem(allow_bucket_creation=True).create_dir(BUCKET)
    return s3_server


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$EOFORGE_HOME with the demo catalog (1 scene) as configs/data/demo.yaml expects it."""
    home = tmp_path_factory.mktemp("home")
    write_demo_catalog(home / "demo-catalog", scenes=1, seed=0)
    return home


@pytest.fixture
def data_cfg(demo_home: Path, monkeypatch: pytest.MonkeyPatch) -> DataConfig:
    monkeypatch.setenv("EOFORGE_HOME", str(demo_home))
    return load_config(REPO / "configs/data/demo.yaml", DataConfig)


# --------------------------------------------------------------------------- round trip
def test_s3_plan_equals_local_plan(
    s3: str, data_cfg: DataConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "plans" / "demo.parquet"
    uri = f"s3://{BUCKET}/plans/demo.parquet"
    assert not plan_exists(uri)
    digest, n = build_plan(data_cfg, local)
    # the CLI writes the S3 copy: `eoforge plan --out s3://...` (a str, not a local Path)
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["plan", "--config", "configs/data/demo.yaml", "--out", uri])
    assert result.exit_code == 0, result.output
    assert f"plan: {uri} ({n} chips, hash {digest})" in result.output
    assert n > 0 and plan_exists(uri) and plan_exists(local)

    # same bytes, so the same content hash wherever the plan lives
    fs, path = filesystem_of(uri)
    with fs.open_input_stream(path) as f:
        assert f.read() == local.read_bytes()
    assert stored_hash(uri) == stored_hash(local) == digest

    frame_s3, hash_s3 = read_plan(uri)  # verify=True recomputes the hash from the rows
    frame_local, hash_local = read_plan(local)
    assert hash_s3 == hash_local == digest
    assert len(frame_s3) == n
    assert frame_s3.crs == frame_local.crs
    assert_geodataframe_equal(frame_s3, frame_local)  # identical rows, geometry included

    stats = plan_stats(uri)
    assert stats == plan_stats(local)
    assert stats["stages"]["chips_in_s1"] == n
    assert set(stats) >= {"stages", "pairing", "skipped_items"}

    # what Ray Data is fed (build_chip_dataset reads it on the driver, then from_arrow)
    for split in ("train", "all"):
        assert read_stream_table(uri, split).equals(read_stream_table(local, split))


def test_jobs_find_build_and_read_a_plan_in_s3(s3: str, data_cfg: DataConfig) -> None:
    from eoforge.plan.io import ensure_plan

    uri = f"s3://{BUCKET}/jobs/plan.parquet"
    overrides = [f"data.plan={uri}", f"data.config={REPO / 'configs/data/demo.yaml'}", "data.split=all"]
    cfg = load_config(REPO / "configs/pretrain/dual_simclr.yaml", PretrainConfig, overrides)
    check_inputs(cfg)  # plan missing but its data config exists: fine
    digest, counts = ensure_plan(cfg.data.plan, cfg.data.config)  # builds the plan into the bucket, reads it back
    assert plan_exists(uri) and stored_hash(uri) == digest and sum(counts.values()) == len(read_plan(uri)[0])
    assert ensure_plan(cfg.data.plan, cfg.data.config) == (digest, counts)  # found this time

    cfg.data.plan = f"s3://{BUCKET}/jobs/missing.parquet"
    cfg.data.config = None
    with pytest.raises(ConfigError, match=r"data.plan: s3://eoforge-plans/jobs/missing.parquet does not exist"):
        check_inputs(cfg)
    cfg.data.plan = "s3://no-such-plans-bucket/plan.parquet"
    with pytest.raises(ServiceError, match=r"data.plan s3://no-such-plans-bucket/plan.parquet: bucket"):
        check_inputs(cfg)


# --------------------------------------------------------------------------- errors
def test_missing_key_is_a_clear_error(s3: str) -> None:
    uri = f"s3://{BUCKET}/plans/nope.parquet"
    assert not plan_exists(uri)
    for read in (read_plan, stored_hash, plan_stats, read_stream_table):
        with pytest.raises(CatalogError, match=rf"^chip plan {uri}: not found \(build it with `eoforge plan`\)$"):
            read(uri)


def test_missing_bucket_is_a_clear_error(s3: str, data_cfg: DataConfig) -> None:
    uri = "s3://no-such-plans-bucket/plans/demo.parquet"
    expected = (
        rf"chip plan {uri}: bucket 'no-such-plans-bucket' does not exist at endpoint {s3} "
        r"\(or these credentials cannot see it\); create it first"
    )
    for call in (plan_exists, read_plan, stored_hash, plan_stats):
        with pytest.raises(ServiceError, match=expected):
            call(uri)
    rows, _ = plan_rows_with_stats(data_cfg)
    with pytest.raises(ServiceError, match=expected):
        write_plan(rows, uri)  # checked before anything is uploaded
    assert s3_filesystem().get_file_info("no-such-plans-bucket").type.name == "NotFound"  # not created


def test_refused_credentials_name_the_uri_not_the_secret(
    s3_auth_server: str,
    data_cfg: DataConfig,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows, _ = plan_rows_with_stats(data_cfg)
    _aws_env(monkeypatch, s3_auth_server, tmp_path)
    uri = f"s3://{BUCKET}/plans/demo.parquet"
    caplog.set_level(logging.DEBUG)
    denied = rf"^chip plan {uri}: access denied at endpoint {s3_auth_server}: check the credentials"
    for call in (read_plan, plan_stats, lambda u: write_plan(rows, u)):
        with pytest.raises(ServiceError, match=denied) as info:
            call(uri)
        assert SECRET not in str(info.value)
    assert SECRET not in caplog.text

    # No credentials at all: the SDK sends unsigned requests. AWS answers 403 (the case above);
    # moto answers 500, so only the generic message is checked: URI, endpoint, what to check.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ServiceError, match=rf"^chip plan {uri}: .* at endpoint {s3_auth_server}.*credentials"):
        read_plan(uri)


def test_credentials_in_the_uri_are_refused_without_echoing_them() -> None:
    for uri in (
        f"s3://AKIDX:{SECRET}@bucket/plan.parquet",
        f"s3://bucket/plan.parquet?access_key=AKIDX&secret_key={SECRET}",
    ):
        with pytest.raises(ConfigError, match=r"chip plan: s3://bucket/plan.parquet carries credentials") as info:
            plan_exists(uri)
        assert SECRET not in str(info.value)


def test_uris_without_bucket_or_with_unknown_scheme() -> None:
    with pytest.raises(ConfigError, match="has no bucket"):
        plan_exists("s3:///plan.parquet")
    with pytest.raises(ConfigError, match=r"chip plan: cannot open 'nosuchscheme://x/plan.parquet'"):
        plan_exists("nosuchscheme://x/plan.parquet")


# --------------------------------------------------------------------------- other filesystems
def test_fsspec_and_file_urls_round_trip(data_cfg: DataConfig, tmp_path: Path) -> None:
    """Schemes pyarrow does not know go through fsspec (memory:// here); file:// is local."""
    import fsspec

    local = tmp_path / "plan.parquet"
    digest, _ = build_plan(data_cfg, local)
    for uri in ("memory://eoforge-test/plans/demo.parquet", f"file://{tmp_path}/via-url/plan.parquet"):
        assert not plan_exists(uri)
        assert build_plan(data_cfg, uri)[0] == digest
        assert read_plan(uri)[1] == stored_hash(uri) == digest
        assert plan_stats(uri) == plan_stats(local)
    assert fsspec.filesystem("memory").cat("/eoforge-test/plans/demo.parquet") == local.read_bytes()
    assert (tmp_path / "via-url" / "plan.parquet").read_bytes() == local.read_bytes()
    assert not list((tmp_path / "via-url").glob("*.tmp"))
    fsspec.filesystem("memory").rm("/eoforge-test", recursive=True)


def test_unreachable_endpoint_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _aws_env(monkeypatch, endpoint, tmp_path)
    with pytest.raises(
        ServiceError, match=rf"^chip plan s3://{BUCKET}/p.parquet: cannot connect to the store at endpoint {endpoint} "
    ):
        plan_exists(f"s3://{BUCKET}/p.parquet")


def test_rows_read_back_with_pandas_write_the_same_plan(data_cfg: DataConfig, tmp_path: Path) -> None:
    """GeoParquet -> geopandas rows (NaN for missing text) -> write_plan: the same content hash."""
    digest, _ = build_plan(data_cfg, tmp_path / "a.parquet")
    frame, _ = read_plan(tmp_path / "a.parquet")
    assert frame["season"].isna().all()  # null columns come back as NaN/None in pandas
    assert write_plan(frame.to_dict("records"), tmp_path / "b.parquet") == digest
