import subprocess
import sys
from pathlib import Path

import pytest
from eoforge.config import DataConfig, PretrainConfig, load_config
from eoforge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "configs/pretrain/dual_simclr.yaml").read_text()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("batch_size: 32", "batch_size: -4", "train.batch_size: Input should be greater than 0"),
        ("batch_size: 32", "batch_size: many", "train.batch_size: Input should be a valid integer"),
        ("num_workers: 1", "num_workers: 1\n  gpus_per_worker: 1", "scaling.gpus_per_worker: unknown key"),
        (
            "num_workers: 1",
            "num_workers: 1\n  resources_per_worker: {CPU: 2}",
            "scaling.resources_per_worker: ['CPU'] are not custom resources",
        ),
        (
            "num_workers: 1",
            "num_workers: 1\n  resources_per_worker: {spot_gpu: 0}",
            "scaling.resources_per_worker.spot_gpu: Input should be greater than 0",
        ),
        ("kind: dual_simclr", "kind: simclr3", "objective.kind: Input should be 'dual_simclr'"),
        ("name: demo-dual-simclr-r10t", "name: 'bad name!'", "run.name: String should match pattern"),
        ("temperature: 0.1", "temperature: 0", "objective.temperature: Input should be greater than 0"),
    ],
)
def test_malformed_pretrain_configs_name_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in GOOD
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError) as err:
        load_config(path, PretrainConfig)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_data_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("kind: data\ncatalog: {backend: static, url: x, bbox: [10, 5, 0, 6]}\nsplits: {train: 0.9}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, DataConfig)
    assert "catalog.bbox: bbox must be" in str(err.value)
    assert "splits: train + val + test must be 1" in str(err.value)


def test_missing_file_and_unset_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    monkeypatch.delenv("EOFORGE_HOME", raising=False)
    with pytest.raises(ConfigError, match=r"data.plan: environment variable \$\{EOFORGE_HOME\} is not set"):
        load_config(REPO / "configs/pretrain/dual_simclr.yaml", PretrainConfig)


def test_cli_and_job_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("batch_size: 32", "batch_size: -1"))
    env_bin = Path(sys.executable).parent
    for cmd in (
        [sys.executable, str(REPO / "jobs/pretrain.py"), "--config", str(bad)],
        [str(env_bin / "eoforge"), "plan", "--config", str(bad), "--out", str(tmp_path / "p.parquet")],
    ):
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={"EOFORGE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "error:" in proc.stderr


@pytest.mark.parametrize("name", ["cluster-example.yaml", "cluster-local.yaml"])
def test_cluster_pretrain_configs_survive_a_lost_node(name: str) -> None:
    """A pretraining job on a cluster restarts its workers from the last checkpoint when a node is lost."""
    raw = (REPO / "configs/pretrain" / name).read_text().replace("${EOFORGE_HOME}", "/tmp")
    cfg = PretrainConfig.model_validate(__import__("yaml").safe_load(raw))
    assert cfg.run.max_failures > 0
    assert cfg.train.checkpoint_every_steps <= 200  # a lost node costs at most this many steps
