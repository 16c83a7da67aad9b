"""eoforge.k8s.render: the RayJob the Python renderer makes for a config is kustomize's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from eoforge.errors import ConfigError, ServiceError
from eoforge.k8s.cli import app
from eoforge.k8s.render import MAX_RAYJOB_NAME, rayjob_name, render_job
from typer.testing import CliRunner

from tests.k8s.helpers import EXAMPLE_CONFIG, OVERLAYS, ROOT, Obj, find


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch copy of the checkout's k8s/ and configs/ (for configs the repo does not have)."""
    for folder in ("k8s", "configs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def _edit(path: Path, **sections: dict[str, object]) -> None:
    raw = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_equals_kustomize(rendered: dict[str, list[Obj]], overlay: str) -> None:
    job = render_job(ROOT / EXAMPLE_CONFIG[overlay], overlay, ROOT)
    (expected,) = find(rendered[overlay], "RayJob", job.name)
    assert job.rayjob == expected
    assert job.namespace == "eoforge"
    # It brings the ConfigMaps its pods mount, exactly as kustomize rendered them.
    by_name = {c["metadata"]["name"]: c for c in find(rendered[overlay], "ConfigMap")}
    assert job.configmaps and all(by_name[c["metadata"]["name"]] == c for c in job.configmaps)
    mounted = {
        v["configMap"]["name"]
        for v in job.rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    assert mounted <= {c["metadata"]["name"] for c in job.configmaps}


def test_renderer_equals_kustomize_from_a_relative_path(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    job = render_job("configs/pretrain/cluster-example.yaml", "gke")  # project dir found from cwd
    assert job.rayjob == find(rendered["gke"], "RayJob", "eoforge-pretrain-example")[0]


def test_another_config_changes_only_name_and_entrypoint(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EOFORGE_HOME", raising=False)  # demo.yaml uses ${EOFORGE_HOME}: set in the pods
    job = render_job(ROOT / "configs/pretrain/demo.yaml", "local", ROOT)
    (template,) = find(rendered["local"], "RayJob", "eoforge-pretrain-local")
    assert job.name == "demo-simclr-r10t"  # run.name: demo-simclr-r10t
    assert job.rayjob["spec"]["entrypoint"] == "python jobs/pretrain.py --config configs/pretrain/demo.yaml"
    same = {
        **job.rayjob,
        "metadata": template["metadata"],
        "spec": {**job.rayjob["spec"], "entrypoint": template["spec"]["entrypoint"]},
    }
    assert same == template


def test_cli_render_prints_the_rayjob(rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        app, ["render", "--config", "configs/pretrain/cluster-example.yaml", "--overlay", "eks"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == find(rendered["eks"], "RayJob", "eoforge-pretrain-example")[0]
    result = CliRunner().invoke(
        app, ["render", "-c", "configs/pretrain/cluster-local.yaml", "-o", "local", "--with-configmaps"]
    )
    docs = list(yaml.safe_load_all(result.output))
    assert [d["kind"] for d in docs][-1] == "RayJob" and {d["kind"] for d in docs[:-1]} == {"ConfigMap"}


@pytest.mark.parametrize(
    ("run_name", "expected"),
    [
        ("eoforge-pretrain-example", "eoforge-pretrain-example"),
        ("Demo_Dual.SimCLR", "demo-dual-simclr"),
        ("2024-summer", "job-2024-summer"),
        ("-x-", "x"),
    ],
)
def test_rayjob_names_are_dns_1035(run_name: str, expected: str) -> None:
    assert rayjob_name(run_name) == expected


def test_long_run_names_are_shortened_and_stay_distinct() -> None:
    a, b = rayjob_name("a" * 60 + "-one"), rayjob_name("a" * 60 + "-two")
    assert len(a) <= MAX_RAYJOB_NAME and len(b) <= MAX_RAYJOB_NAME and a != b
    with pytest.raises(ConfigError, match="no letters or digits"):
        rayjob_name("___")


# --------------------------------------------------------------------------- errors
def test_gpu_config_on_the_cpu_only_overlay_is_refused() -> None:
    with pytest.raises(ConfigError, match="overlay 'local' has no GPU worker group"):
        render_job(ROOT / "configs/pretrain/cluster-example.yaml", "local", ROOT)


def test_more_workers_than_gpus_is_refused(project: Path) -> None:
    _edit(project / "configs/pretrain/cluster-example.yaml", scaling={"num_workers": 99})
    with pytest.raises(ConfigError, match=r"num_workers: 99.*at most 4 GPUs"):
        render_job(project / "configs/pretrain/cluster-example.yaml", "gke", project)
    _edit(project / "configs/pretrain/cluster-example.yaml", scaling={"num_workers": 2, "cpus_per_worker": 64})
    with pytest.raises(ConfigError, match="cpus_per_worker: 64 CPUs"):
        render_job(project / "configs/pretrain/cluster-example.yaml", "eks", project)


def test_invalid_config_fails_with_its_field(project: Path) -> None:
    _edit(project / "configs/pretrain/cluster-example.yaml", train={"batch_size": 0})
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        render_job(project / "configs/pretrain/cluster-example.yaml", "gke", project)


def test_config_not_in_the_configmap_generator_is_refused(project: Path) -> None:
    shutil.copy(project / "configs/pretrain/cluster-example.yaml", project / "configs/pretrain/unlisted.yaml")
    with pytest.raises(ConfigError, match=r"configs/pretrain/unlisted.yaml is not in ConfigMap.*configs/kustomization"):
        render_job(project / "configs/pretrain/unlisted.yaml", "gke", project)


def test_config_outside_configs_is_refused(project: Path, tmp_path: Path) -> None:
    elsewhere = project / "elsewhere.yaml"
    shutil.copy(project / "configs/pretrain/cluster-example.yaml", elsewhere)
    with pytest.raises(ConfigError, match=r"expected configs/<kind folder>/<name>\.yaml"):
        render_job(elsewhere, "gke", project)
    with pytest.raises(ConfigError, match="must be inside"):
        render_job(ROOT / "configs/pretrain/cluster-example.yaml", "gke", project)


def test_kinds_without_a_job_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"has 0 RayJobs labelled eoforge\.io/job=data"):
        render_job(ROOT / "configs/data/demo.yaml", "gke", ROOT)


def test_sweep_config_renders_the_sweep_rayjob() -> None:
    job = render_job(ROOT / "configs/sweep/label_fractions.yaml", "gke", ROOT).rayjob
    assert job["spec"]["entrypoint"].endswith("--config configs/sweep/label_fractions.yaml")
    assert "suspend" not in job["spec"]


def test_unknown_overlay_lists_the_overlays() -> None:
    with pytest.raises(ConfigError, match=r"overlays are \['eks', 'gke', 'local'\]"):
        render_job(ROOT / "configs/pretrain/cluster-example.yaml", "aks", ROOT)


def test_broken_kustomization_reports_kustomize_error(project: Path) -> None:
    (project / "k8s/overlays/gke/kustomization.yaml").write_text("resources: [../../nope]\n")
    with pytest.raises(ConfigError, match=r"kubectl kustomize .* failed"):
        render_job(project / "configs/pretrain/cluster-example.yaml", "gke", project)


def test_missing_kubectl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError, match="needs kubectl"):
        render_job(ROOT / "configs/pretrain/cluster-example.yaml", "gke", ROOT)
