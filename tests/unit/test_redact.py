"""Redaction of signed URLs and embedded credentials, and configs that embed credentials refused at load."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import yaml
from eoforge.config import PretrainConfig, load_config
from eoforge.errors import ChipReadError, ConfigError
from eoforge.redact import embedded_credentials, redact, redact_tree, redact_url

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://acct.blob.core.windows.net/c/B04.tif?st=2024-01-01&se=2099-01-01&sp=rl&sv=2021&sr=b&sig=AbC%2B%3D",
            "https://acct.blob.core.windows.net/c/B04.tif?…",
        ),
        (
            "s3://bucket/k.tif?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F&X-Amz-Signature=deadbeef",
            "s3://bucket/k.tif?…",
        ),
        ("gs://b/k.tif?X-Goog-Signature=abc&X-Goog-Credential=sa", "gs://b/k.tif?…"),
        ("https://user:hunter2@mlflow.example.com:5000/path", "https://***@mlflow.example.com:5000/path"),
        ("s3://AKIAXXX:secretkey@bucket/runs", "s3://***@bucket/runs"),
        ("https://h/x#access_token=abc", "https://h/x#…"),  # a fragment carrying a credential key goes
        ("http://127.0.0.1:5000/#/experiments/2/runs/abc", "http://127.0.0.1:5000/#/experiments/2/runs/abc"),
        ("file:///data/a.tif", "file:///data/a.tif"),
        ("/data/a.tif", "/data/a.tif"),
    ],
)
def test_urls_lose_query_userinfo_and_credential_fragments(text: str, expected: str) -> None:
    assert redact_url(text) == expected
    assert redact(text) == expected


def test_urls_inside_messages_are_redacted_and_the_rest_kept() -> None:
    gdal = (
        "chip c1: https://h/B04.tif: RasterioIOError: '/vsicurl/https://h/B04.tif?se=2099&sig=S3CR3T' "
        "not recognized as being in a supported file format."
    )
    assert redact(gdal) == (
        "chip c1: https://h/B04.tif: RasterioIOError: '/vsicurl/https://h/B04.tif?…' "
        "not recognized as being in a supported file format."
    )
    # a URL ending a clause keeps its punctuation; one in brackets keeps the bracket
    assert (
        redact("HTTP response code on http://h:1/x.tif?sig=S3CR3T: 404")
        == "HTTP response code on http://h:1/x.tif?…: 404"
    )
    assert redact("(see s3://k:s@b/p)") == "(see s3://***@b/p)"
    # without a scheme, credential keys' values go (a local path GDAL quotes, a bare query)
    assert redact("/tmp/x.tif?sig=S3CR3T&se=1: No such file") == "/tmp/x.tif?sig=***&se=1: No such file"
    assert redact("query ?X-Amz-Signature=S3CR3T&token=T0K") == "query ?X-Amz-Signature=***&token=***"
    assert redact("band=B04 key=blue 5 chips") == "band=B04 key=blue 5 chips"
    assert redact_tree({"a": ["https://u:p@h/x?sig=1", 3], "b": ("s3://b/k?token=1",)}) == {
        "a": ["https://***@h/x?…", 3],
        "b": ("s3://b/k?…",),
    }


def test_errors_and_log_records_are_redacted_when_made() -> None:
    err = ChipReadError("https://h/a.tif: signing failed: 403 for https://h/a.tif?sig=S3CR3T")
    assert "S3CR3T" not in str(err) and str(err).endswith("https://h/a.tif?…")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("rasterio._env.h24test")  # any library's logger: the record factory redacts
    log.addHandler(handler)
    try:
        log.warning("CPLE_AppDefined in HTTP response code on %s: %d", "http://h/x.tif?sig=S3CR3T", 403)
    finally:
        log.removeHandler(handler)
    assert stream.getvalue() == "CPLE_AppDefined in HTTP response code on http://h/x.tif?…: 403\n"


def test_embedded_credentials_are_found() -> None:
    assert embedded_credentials("http://u:p@h:5000") is not None
    assert embedded_credentials("https://token@h") is not None
    assert "x-amz-signature" in str(embedded_credentials("s3://b/p?X-Amz-Signature=1"))
    assert "access_key" in str(embedded_credentials("s3://b/p.parquet?access_key=AKID&secret_key=S"))
    assert embedded_credentials("hdfs://alice:pw@namenode/x") is not None
    assert embedded_credentials("hdfs://alice@namenode/x") is None  # a user name is no secret there
    assert embedded_credentials("s3://b/p") is None
    assert embedded_credentials("http://127.0.0.1:5000") is None
    assert embedded_credentials("/home/me/runs") is None


def _pretrain(tmp_path: Path, **changes: dict[str, object]) -> Path:
    config = yaml.safe_load((REPO / "configs/pretrain/dual_simclr.yaml").read_text())
    for section, values in changes.items():
        config[section].update(values)
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("section", "field", "value", "env_hint"),
    [
        ("mlflow", "tracking_uri", "http://alice:S3CR3T@mlflow.example.com:5000", "MLFLOW_TRACKING_USERNAME"),
        ("mlflow", "tracking_uri", "https://mlflow.example.com/?token=S3CR3T", "MLFLOW_TRACKING_PASSWORD"),
        ("run", "storage_path", "s3://AKIAEXAMPLE:S3CR3T@bucket/runs", "AWS_ACCESS_KEY_ID"),
        ("run", "storage_path", "gs://bucket/runs?X-Goog-Signature=S3CR3T", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("run", "storage_path", "${H24_STORAGE}", "AWS_SECRET_ACCESS_KEY"),  # expanded, then refused
    ],
)
def test_a_config_embedding_credentials_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, field: str, value: str, env_hint: str
) -> None:
    monkeypatch.setenv("EOFORGE_HOME", str(tmp_path))
    monkeypatch.setenv("H24_STORAGE", "s3://AKIAEXAMPLE:S3CR3T@bucket/runs")
    with pytest.raises(ConfigError) as caught:
        load_config(_pretrain(tmp_path, **{section: {field: value}}), PretrainConfig)
    message = str(caught.value)
    assert message.count("\n") == 0 and f"pretrain.yaml: {section}.{field}: embeds credentials" in message
    assert env_hint in message and "S3CR3T" not in message


def test_a_config_without_credentials_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOFORGE_HOME", str(tmp_path))
    monkeypatch.setenv("H24_STORAGE", "s3://bucket/runs")
    cfg = load_config(
        _pretrain(tmp_path, mlflow={"tracking_uri": "http://127.0.0.1:5000"}, run={"storage_path": "${H24_STORAGE}"}),
        PretrainConfig,
    )
    assert cfg.run.storage_path == "s3://bucket/runs" and cfg.mlflow.tracking_uri == "http://127.0.0.1:5000"
