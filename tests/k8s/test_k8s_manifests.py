"""k8s/: every overlay renders, validates (KubeRay CRD schemas, Kubernetes schemas, strict) and
keeps the promises the platform relies on: GPUs only on the GPU group, a head that takes no
work, nothing running as root, MLflow reachable by its in-cluster name, configs mounted."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s.helpers import (
    GPU_NODE_LABELS,
    GPU_OVERLAYS,
    GPU_TAINTS,
    OVERLAYS,
    ROOT,
    Obj,
    cluster_specs,
    find,
    pod_specs,
)

K8S_VERSIONS = ("1.33.0", "1.37.0")  # oldest in GKE/EKS standard support at KubeRay 1.7 .. newest known
CUSTOM_KINDS = {"RayCluster", "RayJob"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def test_every_overlay_renders_into_one_namespace(rendered: dict[str, list[Obj]]) -> None:
    for overlay in ("base", *OVERLAYS):
        objs = rendered[overlay]
        kinds = {o["kind"] for o in objs}
        assert {
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "RayCluster",
            "RayJob",
            "ConfigMap",
            "Deployment",
            "StatefulSet",
            "Service",
            "NetworkPolicy",
        } <= kinds, overlay
        for o in objs:
            if o["kind"] != "Namespace":
                assert o["metadata"].get("namespace") == "eoforge", (
                    overlay,
                    o["kind"],
                    o["metadata"]["name"],
                )
        assert not find(objs, "Secret"), "secrets are referenced, never rendered"


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_ray_objects_validate_against_kuberay_v1_crds(
    rendered: dict[str, list[Obj]], crd_schemas: dict[str, Obj], overlay: str
) -> None:
    objs = [o for o in rendered[overlay] if o["kind"] in CUSTOM_KINDS]
    assert {o["kind"] for o in objs} == CUSTOM_KINDS
    for obj in objs:
        assert obj["apiVersion"] == "ray.io/v1"
        validator = jsonschema.Draft7Validator(crd_schemas[obj["kind"]])
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']} ({overlay}):\n" + "\n".join(errors)


def test_crd_validation_catches_unknown_fields(crd_schemas: dict[str, Obj], rendered: dict[str, list[Obj]]) -> None:
    job = find(rendered["gke"], "RayJob")[0]
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["shutdownAfterJobFinish"] = True  # typo
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    errors = list(jsonschema.Draft7Validator(crd_schemas["RayJob"]).iter_errors(bad))
    assert len(errors) == 2


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_strictly(rendered: dict[str, list[Obj]], overlay: str, version: str) -> None:
    problems = []
    for obj in rendered[overlay]:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {'/'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- GPUs and the head
def _tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    """Kubernetes' rule: a toleration matches a taint by key, effect and (operator Equal) value."""
    for t in tolerations:
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator", "Equal") == "Exists":
            if t.get("key") in (None, "", taint["key"]):
                return True
        elif t.get("key") == taint["key"] and t.get("value", "") == taint["value"]:
            return True
    return False


def _gpus(container: Obj) -> int:
    res = container.get("resources", {})
    return int(res.get("limits", {}).get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_groups_request_gpus_and_tolerate_the_pool_taint(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for where, spec in cluster_specs(rendered[overlay]):
        assert spec["enableInTreeAutoscaling"] is True, where
        gpu_groups = [g for g in spec["workerGroupSpecs"] if _gpus(g["template"]["spec"]["containers"][0])]
        assert [g["groupName"] for g in gpu_groups] == ["gpu"], where
        for group in gpu_groups:
            pod = group["template"]["spec"]
            limits = pod["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1
            assert _tolerates(pod.get("tolerations", []), GPU_TAINTS[overlay]), (
                where,
                pod.get("tolerations"),
            )
            assert GPU_NODE_LABELS[overlay] <= set(pod.get("nodeSelector", {})), (
                where,
                pod.get("nodeSelector"),
            )
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
            assert group["maxReplicas"] >= 1 and group["minReplicas"] == 0  # GPU nodes only while needed
        for group in spec["workerGroupSpecs"]:
            if group not in gpu_groups:  # CPU groups stay off GPU nodes
                assert not _tolerates(group["template"]["spec"].get("tolerations", []), GPU_TAINTS[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_takes_no_work_and_requests_no_gpu(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for where, spec in cluster_specs(rendered[overlay]):
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", where
        pod = head["template"]["spec"]
        for container in pod["containers"]:
            res = container.get("resources", {})
            assert "nvidia.com/gpu" not in {**res.get("requests", {}), **res.get("limits", {})}, where
        for taint in GPU_TAINTS.values():
            assert not _tolerates(pod.get("tolerations", []), taint), where
        assert not set(pod.get("nodeSelector", {})) & set().union(*GPU_NODE_LABELS.values()), where


def test_local_overlay_is_cpu_only_and_small(rendered: dict[str, list[Obj]]) -> None:
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(rendered["local"])
    for _, spec in cluster_specs(rendered["local"]):
        assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu"]
        assert spec["workerGroupSpecs"][0]["maxReplicas"] <= 2


# --------------------------------------------------------------------------- non-root
def _check_container(ctx: Obj, pod_ctx: Obj, where: str) -> list[str]:
    bad = []
    if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
        bad.append(f"{where}: runAsNonRoot is not true")
    if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
        bad.append(f"{where}: runAsUser 0")
    if ctx.get("allowPrivilegeEscalation") is not False:
        bad.append(f"{where}: allowPrivilegeEscalation is not false")
    if ctx.get("readOnlyRootFilesystem") is not True:
        bad.append(f"{where}: readOnlyRootFilesystem is not true")
    if ctx.get("privileged"):
        bad.append(f"{where}: privileged")
    caps = ctx.get("capabilities", {})
    if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        bad.append(f"{where}: capabilities must drop ALL (and add nothing but NET_BIND_SERVICE)")
    seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        bad.append(f"{where}: seccompProfile is {seccomp!r}")
    return bad


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_can_run_as_root(rendered: dict[str, list[Obj]], overlay: str) -> None:
    problems, checked = [], 0
    for obj in rendered[overlay]:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        for where, pod in pod_specs(obj.get("spec", {})):
            pod_ctx = pod.get("securityContext", {})
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                if pod.get(flag):
                    problems.append(f"{name}{where}: {flag}")
            for vol in pod.get("volumes", []):
                if not set(vol) - {"name"} <= RESTRICTED_VOLUMES:
                    problems.append(f"{name}{where}: volume {vol['name']} is not allowed under 'restricted'")
            for c in pod.get("initContainers", []) + pod["containers"]:
                problems += _check_container(c.get("securityContext", {}), pod_ctx, f"{name}{where}/{c['name']}")
                checked += 1
        if obj["kind"] == "RayCluster" or obj["kind"] == "RayJob":
            spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterSpec"]
            # The autoscaler sidecar KubeRay adds to the head takes its securityContext from here.
            problems += _check_container(spec["autoscalerOptions"]["securityContext"], {}, f"{name}/autoscaler")
    assert not problems, "\n".join(problems)
    assert checked >= 10


def test_namespace_enforces_pod_security_restricted(rendered: dict[str, list[Obj]]) -> None:
    for overlay in OVERLAYS:
        (ns,) = find(rendered[overlay], "Namespace")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------- jobs and configs
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjobs_run_on_the_raycluster_spec_and_clean_up(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    (cluster,) = find(objs, "RayCluster")
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    jobs = {j["metadata"]["labels"]["eoforge.io/job"]: j for j in find(objs, "RayJob")}
    assert set(jobs) == {"pretrain", "sweep", "predict"}
    for kind, job in jobs.items():
        spec = job["spec"]
        assert spec["rayClusterSpec"] == cluster["spec"], f"{overlay}: RayJob cluster != RayCluster (replacements?)"
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["submissionMode"] == "K8sJobMode"
        words = spec["entrypoint"].split()
        assert words[:3] == ["python", f"jobs/{kind}.py", "--config"] and words[3].startswith(f"configs/{kind}/")
        assert (ROOT / words[3]).is_file(), words[3]
        images = {c["image"] for _, pod in pod_specs(spec) for c in pod["containers"]}
        assert len(images) == 1 and "eoforge" in images.pop()  # head, workers and submitter: one image
    assert jobs["sweep"]["spec"].get("suspend") is None  # jobs/sweep.py runs the sweep


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_mount_the_generated_config_maps(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    configmaps = {c["metadata"]["name"]: c for c in find(objs, "ConfigMap")}
    for job in find(objs, "RayJob"):
        config = job["spec"]["entrypoint"].split()[3]  # configs/<folder>/<file>
        folder, filename = Path(config).parts[1:]
        for _, pod in pod_specs(job["spec"]["rayClusterSpec"]):
            container = pod["containers"][0]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volume = mounts[f"{container['workingDir']}/configs/{folder}"]
            (cm_name,) = [v["configMap"]["name"] for v in pod["volumes"] if v["name"] == volume]
            assert cm_name.startswith(f"eoforge-configs-{folder}-"), cm_name  # kustomize's content hash
            assert configmaps[cm_name]["data"][filename] == (ROOT / config).read_text()
            env_from = {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e}
            assert env_from <= set(configmaps), env_from


def test_every_job_config_is_in_the_configmap_generator() -> None:
    kustomization = yaml.safe_load((ROOT / "configs" / "kustomization.yaml").read_text())
    listed = {f for gen in kustomization["configMapGenerator"] for f in gen["files"]}
    on_disk = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").glob("*/*.yaml")}
    on_disk = {p for p in on_disk if p.split("/")[0] in ("pretrain", "data", "sweep", "predict")}
    assert on_disk - listed == set(), "add these to configs/kustomization.yaml so k8s jobs can run them"


# --------------------------------------------------------------------------- MLflow and network
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_serves_its_in_cluster_names(rendered: dict[str, list[Obj]], overlay: str) -> None:
    from urllib.parse import urlparse

    from mlflow.server.security_utils import is_allowed_host_header

    objs = rendered[overlay]
    (deploy,) = find(objs, "Deployment", "mlflow")
    (svc,) = find(objs, "Service", "mlflow")
    assert find(objs, "StatefulSet", "mlflow-postgres")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    allowed = args["allowed-hosts"].split(",")
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    # Static keys only where there is no cloud identity (MinIO's, local); IRSA / Workload Identity elsewhere.
    secret_refs = [e for e in container["envFrom"] if "secretRef" in e]
    assert secret_refs == ([{"secretRef": {"name": "eoforge-s3"}}] if overlay == "local" else []), secret_refs
    (storage,) = [
        find(objs, "ConfigMap", e["configMapRef"]["name"])[0] for e in container["envFrom"] if "configMapRef" in e
    ]
    scheme = "gs://" if overlay == "gke" else "s3://"
    assert storage["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith(scheme)
    # Every tracking URI a Ray pod uses must pass MLflow's own Host check.
    port = svc["spec"]["ports"][0]["port"]
    for _, spec in cluster_specs(objs):
        for _, pod in pod_specs(spec):
            uri = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}["MLFLOW_TRACKING_URI"]
            url = urlparse(uri)
            assert url.hostname.split(".")[0] == svc["metadata"]["name"] and url.port == port
            assert is_allowed_host_header(allowed, url.netloc), (url.netloc, allowed)
    assert is_allowed_host_header(allowed, "localhost:5000")  # kubectl port-forward
    assert not is_allowed_host_header(allowed, "evil.example.com")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_cluster_pods(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    policies = {p["metadata"]["name"]: p["spec"] for p in find(objs, "NetworkPolicy")}
    ray_pod = {"ray.io/is-ray-node": "yes"}
    # MLflow: only Ray pods, only the HTTP port.
    mlflow = policies["mlflow"]
    assert mlflow["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": ray_pod}}], "ports": [{"protocol": "TCP", "port": 5000}]}
    ]
    # Ray: any port from Ray pods; the dashboard (8265) also from submitters and the operator.
    ray = policies["ray-cluster"]
    assert ray["podSelector"] == {"matchLabels": ray_pod}
    assert ray["ingress"][0] == {"from": [{"podSelector": {"matchLabels": ray_pod}}]}
    assert ray["ingress"][1]["ports"] == [{"protocol": "TCP", "port": 8265}]
    submitter_labels = [j["spec"]["submitterPodTemplate"]["metadata"]["labels"] for j in find(objs, "RayJob")]
    peers = ray["ingress"][1]["from"]
    assert all(peers[0]["podSelector"]["matchLabels"].items() <= labels.items() for labels in submitter_labels)
    assert peers[1]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}
    # Each ingress policy selects pods that exist (no typo leaves a server open); egress and the
    # default deny are checked in test_k8s_security.py.
    templates = [
        t["spec"]["template"]["metadata"]["labels"] for t in objs if t["kind"] in ("Deployment", "StatefulSet")
    ]
    ingress = {name: spec for name, spec in policies.items() if spec["policyTypes"] == ["Ingress"]}
    assert {"ray-cluster", "mlflow", "mlflow-postgres"} <= set(ingress)
    for name, spec in ingress.items():
        if name != "ray-cluster":
            sel = spec["podSelector"]["matchLabels"].items()
            assert any(sel <= labels.items() for labels in templates), name


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity (``8Gi``, ``512Mi``, ``1073741824``) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_every_ray_pod_has_an_object_store_inside_its_shared_memory(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    # Ray's default store (30 % of the container's memory) can be larger than /dev/shm, and Ray then
    # puts it on disk (/tmp); an explicit size inside /dev/shm and the memory limit keeps it in RAM
    for where, spec in cluster_specs(rendered[overlay]):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            name = f"{where}/{group.get('groupName', 'head')}"
            store = _bytes(group["rayStartParams"]["object-store-memory"])
            pod = group["template"]["spec"]
            (container,) = [c for c in pod["containers"] if c["name"].startswith("ray")]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/dev/shm" in mounts, name
            (shm,) = [v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"]]
            assert shm["emptyDir"]["medium"] == "Memory", name
            shm_bytes = _bytes(shm["emptyDir"]["sizeLimit"])
            memory = _bytes(container["resources"]["limits"]["memory"])
            # tmpfs pages count against the container's memory: store + heap must fit the limit
            assert store <= 0.8 * shm_bytes and shm_bytes <= memory // 2, (name, store, shm_bytes, memory)


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_every_ray_container_runs_with_eoforges_ray_node_settings(rendered: dict[str, list[Obj]], overlay: str) -> None:
    # the settings `eoforge up` and the embedded default start Ray with (eoforge.ray_node), so a
    # pod's object store frees dead blocks as promptly as the local stack's does
    from eoforge.ray_node import RAY_NODE_ENV

    for where, spec in cluster_specs(rendered[overlay]):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            (container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray")]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert {k: env.get(k) for k in RAY_NODE_ENV} == RAY_NODE_ENV, f"{where}/{group.get('groupName', 'head')}"
