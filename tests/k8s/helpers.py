"""Shared constants and helpers of the Kubernetes tests (fixtures are in conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT.parent / "shared" / "k8s-schemas"
OVERLAYS = ("gke", "eks", "local")
GPU_OVERLAYS = ("gke", "eks")
# The taint each overlay's GPU node pool carries (docs/kubernetes.md creates the pools):
# GKE taints accelerator pools itself; the EKS Karpenter NodePool sets this one.
GPU_TAINTS = {
    "gke": {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
    "eks": {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
}
GPU_NODE_LABELS = {
    "gke": {"cloud.google.com/gke-accelerator"},
    "eks": {"karpenter.sh/nodepool", "karpenter.k8s.aws/instance-gpu-manufacturer"},
}
# The config each overlay's pretrain RayJob was written for.
EXAMPLE_CONFIG = {
    "gke": "configs/pretrain/cluster-example.yaml",
    "eks": "configs/pretrain/cluster-example.yaml",
    "local": "configs/pretrain/cluster-local.yaml",
}

Obj = dict[str, Any]


def kustomize(path: Path) -> list[Obj]:
    proc = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def strict_schema(schema: Any) -> Any:
    """Forbid unknown fields, as the API server does with kubectl's default --validate=strict."""
    if isinstance(schema, dict):
        schema = {k: strict_schema(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def cluster_specs(objects: list[Obj]) -> list[tuple[str, Obj]]:
    """(label, Ray cluster spec) of every RayCluster and every RayJob's rayClusterSpec."""
    specs = [(f"RayCluster/{o['metadata']['name']}", o["spec"]) for o in find(objects, "RayCluster")]
    specs += [(f"RayJob/{o['metadata']['name']}", o["spec"]["rayClusterSpec"]) for o in find(objects, "RayJob")]
    return specs


def pod_specs(obj: Any, where: str = "") -> list[tuple[str, Obj]]:
    """Every PodSpec inside a manifest (Deployments, Jobs, Ray head/worker/submitter templates)."""
    found = []
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            found.append((where, obj))
        for key, value in obj.items():
            found += pod_specs(value, f"{where}/{key}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            found += pod_specs(item, f"{where}/{i}")
    return found
