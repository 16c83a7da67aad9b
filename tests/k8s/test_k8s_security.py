"""k8s/ least privilege, on the rendered overlays: who holds an API token, which cloud identity
each workload has, what may leave the namespace, what a container may write, and which exact
image runs (docs/kubernetes.md, "Security")."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from tests.k8s.helpers import GPU_OVERLAYS, OVERLAYS, Obj, cluster_specs, find, pod_specs

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# KubeRay v1.7.0 ray-operator/controllers/ray/common/rbac.go BuildRole: what its autoscaler gets.
KUBERAY_AUTOSCALER_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["pods/resize"], "verbs": ["patch"]},
    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]},
]
# Documentation ranges (RFC 5737) the base uses as "matches nothing" placeholders.
BASE_PLACEHOLDERS = {"192.0.2.0/24", "192.0.2.1/32", "198.51.100.0/24"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
RAY_POD = {"ray.io/is-ray-node": "yes"}
SCRATCH_ENV = ("HOME", "EOFORGE_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME", "HF_HOME", "PGDATA")


def _objects_with_pods(objs: list[Obj]) -> list[tuple[str, str, Obj]]:
    """(object name, path, PodSpec) of every pod template in a render."""
    out = []
    for obj in objs:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        out += [(name, where, pod) for where, pod in pod_specs(obj.get("spec", {}))]
    return out


def _is_token_volume(volume: Obj) -> bool:
    sources = volume.get("projected", {}).get("sources", [])
    return any("serviceAccountToken" in s for s in sources)


def _policies(objs: list[Obj]) -> dict[str, Obj]:
    return {p["metadata"]["name"]: p["spec"] for p in find(objs, "NetworkPolicy")}


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the only form these manifests use
    return selector.get("matchLabels", {}).items() <= labels.items()


def _egress_of(policies: dict[str, Obj], labels: dict[str, str]) -> dict[str, list[Obj]]:
    """Policy name -> egress rules, for every allowing egress policy that selects a pod with ``labels``."""
    return {
        name: spec.get("egress", [])
        for name, spec in policies.items()
        if spec.get("egress") and _selects(spec["podSelector"], labels)
    }


# --------------------------------------------------------------------------- API token
@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_no_pod_mounts_an_api_token_but_the_autoscaler(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    for sa in find(objs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]
    pods = _objects_with_pods(objs)
    assert len(pods) >= 8
    for name, where, pod in pods:
        assert pod.get("automountServiceAccountToken") is False, f"{name}{where}"
        token_volumes = {v["name"] for v in pod.get("volumes", []) if _is_token_volume(v)}
        for c in pod.get("initContainers", []) + pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] not in token_volumes, f"{name}{where}/{c['name']} mounts the API token"
                assert not m["mountPath"].startswith("/var/run/secrets"), f"{name}{where}/{c['name']}"
        if token_volumes:  # only the head pod, for its autoscaler
            assert where.endswith("headGroupSpec/template/spec"), f"{name}{where}"
    for where, spec in cluster_specs(objs):
        head = spec["headGroupSpec"]["template"]["spec"]
        (token,) = [v for v in head["volumes"] if _is_token_volume(v)]
        (projection,) = [s["serviceAccountToken"] for s in token["projected"]["sources"] if "serviceAccountToken" in s]
        assert "audience" not in projection and projection["expirationSeconds"] <= 3600, where  # short-lived
        assert spec["enableInTreeAutoscaling"] is True
        mounts = spec["autoscalerOptions"]["volumeMounts"]
        assert {"name": token["name"], "mountPath": TOKEN_DIR, "readOnly": True} in mounts, where
        # The autoscaler's scratch is its own, not the driver's /tmp.
        (tmp,) = [m["name"] for m in mounts if m["mountPath"] == "/tmp"]
        head_mounts = {m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
        assert tmp not in head_mounts, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_role_grants_what_kuberay_grants_and_nothing_else(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")
    (role,) = find(objs, "Role", "eoforge-ray-autoscaler")
    assert role["rules"] == KUBERAY_AUTOSCALER_RULES
    (binding,) = find(objs, "RoleBinding", "eoforge-ray-autoscaler")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "eoforge-ray", "namespace": "eoforge"}]
    # Nothing in the namespace is bound to a role that reads secrets or runs code in pods.
    for r in find(objs, "Role"):
        for rule in r["rules"]:
            assert not {"secrets", "pods/exec", "pods/attach", "*"} & set(rule["resources"]), r["metadata"]["name"]
            assert "*" not in rule["verbs"], r["metadata"]["name"]


# --------------------------------------------------------------------------- identities and keys
def _service_account(objs: list[Obj], name: str) -> Obj:
    (sa,) = find(objs, "ServiceAccount", name)
    return sa.get("metadata", {}).get("annotations", {})


@pytest.mark.parametrize(
    ("overlay", "key", "pattern"),
    [
        ("eks", "eks.amazonaws.com/role-arn", r"^arn:aws:iam::\d{12}:role/[\w+=,.@-]+$"),
        ("gke", "iam.gke.io/gcp-service-account", r"^[a-z][a-z0-9-]+@[a-z][a-z0-9-]+\.iam\.gserviceaccount\.com$"),
    ],
)
def test_ray_and_mlflow_have_separate_cloud_identities(
    rendered: dict[str, list[Obj]], overlay: str, key: str, pattern: str
) -> None:
    objs = rendered[overlay]
    ray, mlflow = _service_account(objs, "eoforge-ray")[key], _service_account(objs, "eoforge-mlflow")[key]
    assert re.match(pattern, ray) and re.match(pattern, mlflow), (ray, mlflow)
    assert ray != mlflow, "Ray jobs must not act as MLflow (the only writer of its artifact prefix)"
    # ... and the pods run as those accounts.
    (deploy,) = find(objs, "Deployment", "mlflow")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "eoforge-mlflow"
    for where, spec in cluster_specs(objs):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert group["template"]["spec"]["serviceAccountName"] == "eoforge-ray", where


def _secret_names(obj: Any) -> set[str]:
    """Names of every Secret a manifest references (env, envFrom, volumes)."""
    names: set[str] = set()
    if isinstance(obj, dict):
        for key in ("secretRef", "secretKeyRef"):
            if isinstance(obj.get(key), dict):
                names.add(obj[key]["name"])
        if isinstance(obj.get("secret"), dict):
            names.add(obj["secret"]["secretName"])
        for value in obj.values():
            names |= _secret_names(value)
    elif isinstance(obj, list):
        for item in obj:
            names |= _secret_names(item)
    return names


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_cloud_overlays_use_no_static_storage_keys(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    referenced = set().union(*(_secret_names(o) for o in objs))
    assert referenced == {"mlflow-db"}, referenced  # the database password, nothing for object storage
    for name, where, pod in _objects_with_pods(objs):
        for c in pod["containers"]:
            env = {e["name"] for e in c.get("env", [])}
            assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, f"{name}{where}/{c['name']}"
    (storage,) = [c for c in find(objs, "ConfigMap") if c["metadata"]["name"].startswith("eoforge-storage-")]
    if overlay == "gke":  # GCS natively (Workload Identity), not its S3 endpoint with HMAC keys
        assert storage["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("gs://")
        assert not {k for k in storage["data"] if "ENDPOINT" in k}, storage["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_reach_mlflow_artifacts_only_through_the_server(rendered: dict[str, list[Obj]], overlay: str) -> None:
    # With --serve-artifacts and no --default-artifact-root, runs get mlflow-artifacts:/ URIs: the
    # clients upload and download through the server, so only the server writes the prefix.
    (deploy,) = find(rendered[overlay], "Deployment", "mlflow")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--serve-artifacts" in args
    assert not [a for a in args if a.startswith(("--default-artifact-root", "--artifacts-only"))], args


# --------------------------------------------------------------------------- network
@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_everything_is_denied_unless_allowed(rendered: dict[str, list[Obj]], overlay: str) -> None:
    policies = _policies(rendered[overlay])
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dns = policies["dns"]
    assert dns["podSelector"] == {} and dns["policyTypes"] == ["Egress"]
    (rule,) = dns["egress"]
    assert rule["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    peer, *node_local = rule["to"]  # + node-local resolvers (GKE's Cloud DNS: the metadata server)
    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    assert node_local == ([{"ipBlock": {"cidr": "169.254.169.254/32"}}] if overlay == "gke" else [])
    for name, spec in policies.items():
        for rule in spec.get("egress", []):
            # A rule without `to` (or with an empty peer) allows every destination.
            assert rule.get("to") and all(peer for peer in rule["to"]), name
            for peer in rule["to"]:
                assert set(peer) <= {"ipBlock", "podSelector", "namespaceSelector"}, name
                # Any port only between Ray pods; addresses outside the namespace name their ports.
                if "ipBlock" in peer or "namespaceSelector" in peer:
                    assert rule.get("ports"), f"{name}: an egress rule without ports allows every port"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_allowances_render_per_workload(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    policies = _policies(objs)
    head = {**RAY_POD, "ray.io/node-type": "head"}
    worker = {**RAY_POD, "ray.io/node-type": "worker"}
    labels = {
        "mlflow": find(objs, "Deployment", "mlflow")[0]["spec"]["template"]["metadata"]["labels"],
        "postgres": find(objs, "StatefulSet", "mlflow-postgres")[0]["spec"]["template"]["metadata"]["labels"],
        "submitter": find(objs, "RayJob")[0]["spec"]["submitterPodTemplate"]["metadata"]["labels"],
    }
    # Ray pods: each other (any port), MLflow's HTTP port, object storage + STAC outside.
    ray_egress = _egress_of(policies, worker)
    assert set(ray_egress) == {"dns", "ray-egress-internal", "ray-egress-external"}
    internal = ray_egress["ray-egress-internal"]
    assert internal[0] == {"to": [{"podSelector": {"matchLabels": RAY_POD}}]}
    assert internal[1]["ports"] == [{"protocol": "TCP", "port": 5000}]
    assert _selects(internal[1]["to"][0]["podSelector"], labels["mlflow"])
    assert len(ray_egress["ray-egress-external"]) == 2  # object storage (+ identity), STAC
    # Only the head (its autoscaler) reaches the API server.
    assert set(_egress_of(policies, head)) == set(ray_egress) | {"ray-head-egress-apiserver"}
    # MLflow: its database and object storage; PostgreSQL: DNS only; submitters: the job API only.
    assert set(_egress_of(policies, labels["mlflow"])) == {"dns", "mlflow-egress-internal", "mlflow-egress-external"}
    assert set(_egress_of(policies, labels["postgres"])) == {"dns"}
    (submit,) = _egress_of(policies, labels["submitter"])["ray-submitter-egress"]
    assert submit["ports"] == [{"protocol": "TCP", "port": 8265}]
    # The overlay replaced every base placeholder; the cloud overlays list CIDRs, never "anywhere".
    cidrs = {
        peer["ipBlock"]["cidr"]
        for spec in policies.values()
        for rule in spec.get("egress", [])
        for peer in rule["to"]
        if "ipBlock" in peer
    }
    assert not cidrs & BASE_PLACEHOLDERS, cidrs
    if overlay in GPU_OVERLAYS:
        assert cidrs and "0.0.0.0/0" not in cidrs and "::/0" not in cidrs, cidrs


def _peer_admits(peer: Obj, dst: dict[str, str] | str) -> bool:
    """Whether one egress peer matches a destination: pod labels (this namespace) or an IP."""
    if "ipBlock" in peer:
        if not isinstance(dst, str):
            return False
        ip = ipaddress.ip_address(dst)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if isinstance(dst, str) or "namespaceSelector" in peer:  # other namespaces: DNS only, checked above
        return False
    return _selects(peer["podSelector"], dst)


def _may_connect(policies: dict[str, Obj], src: dict[str, str], dst: dict[str, str] | str, port: int) -> bool:
    """Egress verdict of the rendered policies (TCP), as Kubernetes defines it: a pod no Egress policy
    selects may connect anywhere; a selected one only where a rule of a policy selecting it allows."""
    if not any("Egress" in p["policyTypes"] and _selects(p["podSelector"], src) for p in policies.values()):
        return True
    for rules in _egress_of(policies, src).values():
        for rule in rules:
            ports = [p["port"] for p in rule.get("ports", []) if p["protocol"] == "TCP"]
            if (not rule.get("ports") or port in ports) and any(_peer_admits(peer, dst) for peer in rule["to"]):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_verdicts(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    policies = _policies(objs)
    head, worker = {**RAY_POD, "ray.io/node-type": "head"}, {**RAY_POD, "ray.io/node-type": "worker"}
    mlflow = find(objs, "Deployment", "mlflow")[0]["spec"]["template"]["metadata"]["labels"]
    postgres = find(objs, "StatefulSet", "mlflow-postgres")[0]["spec"]["template"]["metadata"]["labels"]
    submitter = find(objs, "RayJob")[0]["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    first_ip = {  # an address inside each outside allowance of this overlay
        name: str(ipaddress.ip_network(peer["ipBlock"]["cidr"])[-1])
        for name in ("ray-egress-external", "ray-head-egress-apiserver")
        for peer in [policies[name]["egress"][-1]["to"][0]]
        if "ipBlock" in peer
    }
    stac = first_ip["ray-egress-external"]
    if overlay == "local":
        stac = "93.184.215.14"  # any public address (0.0.0.0/0 less private ranges)
    apiserver = first_ip["ray-head-egress-apiserver"]
    api_port = policies["ray-head-egress-apiserver"]["egress"][0]["ports"][0]["port"]
    allowed = [
        (worker, head, 6379),
        (worker, mlflow, 5000),
        (submitter, head, 8265),
        (mlflow, postgres, 5432),
        (worker, stac, 443),
        (head, apiserver, api_port),
    ]
    denied = [
        (worker, postgres, 5432),  # the database: MLflow only
        (worker, mlflow, 5432),
        (submitter, mlflow, 5000),
        (submitter, stac, 443),
        (mlflow, stac, 443),  # MLflow reaches object storage, not the STAC endpoints
        (postgres, stac, 443),
        (worker, apiserver, api_port),  # only the head's autoscaler talks to the API server
        (worker, "10.1.2.3", 443),  # something else inside the VPC
    ]
    if overlay != "local":
        denied.append((worker, "8.8.8.8", 443))  # the internet at large
    for src, dst, port in allowed:
        assert _may_connect(policies, src, dst, port), (src, dst, port)
    for src, dst, port in denied:
        assert not _may_connect(policies, src, dst, port), (src, dst, port)


def test_the_base_alone_lets_nothing_out_of_the_cluster(rendered: dict[str, list[Obj]]) -> None:
    policies = _policies(rendered["base"])
    external = [policies[n] for n in ("ray-egress-external", "mlflow-egress-external", "ray-head-egress-apiserver")]
    cidrs = {peer["ipBlock"]["cidr"] for spec in external for rule in spec["egress"] for peer in rule["to"]}
    assert cidrs == BASE_PLACEHOLDERS


# --------------------------------------------------------------------------- filesystem
def _writable_dirs(pod: Obj, container: Obj) -> dict[str, Obj]:
    """Mount path -> volume, for every writable mount of a container."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {"data"}  # the StatefulSet's volumeClaimTemplates
    out = {}
    for m in container.get("volumeMounts", []):
        if not m.get("readOnly") and (m["name"] in volumes or m["name"] in claims):
            out[m["mountPath"]] = volumes.get(m["name"], {"persistentVolumeClaim": {}})
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_writes_only_to_bounded_scratch(rendered: dict[str, list[Obj]], overlay: str) -> None:
    checked = 0
    for name, where, pod in _objects_with_pods(rendered[overlay]):
        for vol in pod.get("volumes", []):
            if "emptyDir" in vol:
                assert vol["emptyDir"].get("sizeLimit"), f"{name}{where}: emptyDir {vol['name']} has no sizeLimit"
        for c in pod["containers"]:
            here = f"{name}{where}/{c['name']}"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, here
            writable = _writable_dirs(pod, c)
            assert "/tmp" in writable, f"{here}: no writable /tmp"
            for env in c.get("env", []):
                if env["name"] in SCRATCH_ENV:
                    path = env["value"]
                    assert any(path == d or path.startswith(d + "/") for d in writable), f"{here}: {env['name']}={path}"
            if c["name"].startswith("ray-") and "workingDir" in c:  # Ray head and workers
                for d in ("/tmp/ray", "/home/ray/.eoforge", "/home/ray/.cache"):
                    assert d in writable, f"{here}: {d}"
            checked += 1
    assert checked >= 10
    (pg,) = find(rendered[overlay], "StatefulSet", "mlflow-postgres")
    pod = pg["spec"]["template"]["spec"]
    writable = _writable_dirs(pod, pod["containers"][0])
    assert "persistentVolumeClaim" in writable["/var/lib/postgresql/data"]  # the data stays on the PVC
    assert "emptyDir" in writable["/var/run/postgresql"]


# --------------------------------------------------------------------------- images
def _images(objs: list[Obj]) -> list[tuple[str, str]]:
    out = [
        (f"{name}{where}/{c['name']}", c["image"])
        for name, where, pod in _objects_with_pods(objs)
        for c in pod.get("initContainers", []) + pod["containers"]
    ]
    for where, spec in cluster_specs(objs):
        if "image" in spec.get("autoscalerOptions", {}):
            out.append((f"{where}/autoscaler", spec["autoscalerOptions"]["image"]))
    return out


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_cloud_overlays_pin_every_image_by_digest(rendered: dict[str, list[Obj]], overlay: str) -> None:
    images = _images(rendered[overlay])
    assert len(images) >= 10
    assert {i.split("@")[0].rsplit("/", 1)[-1] for _, i in images} == {"eoforge", "postgres"}
    unpinned = [f"{where}: {image}" for where, image in images if not DIGEST.search(image)]
    assert not unpinned, "\n".join(unpinned)


def test_local_overlay_pins_third_party_images_by_digest(rendered: dict[str, list[Obj]]) -> None:
    images = _images(rendered["local"])
    third_party = [(w, i) for w, i in images if i != "eoforge:dev"]  # built and loaded locally
    assert {i.split("@")[0] for _, i in third_party} == {"docker.io/library/postgres", "quay.io/minio/minio"}
    assert all(DIGEST.search(i) for _, i in third_party), third_party
