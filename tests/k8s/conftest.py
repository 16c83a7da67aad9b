"""Fixtures for the Kubernetes tests: every kustomization rendered once, the KubeRay CRD schemas."""

from __future__ import annotations

import copy
import shutil

import pytest
import yaml

from tests.k8s.helpers import OVERLAYS, ROOT, SCHEMAS, Obj, kustomize, strict_schema


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Obj]]:
    """``kubectl kustomize`` of k8s/base and every overlay, once per session."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not on PATH (scripts/bootstrap.sh installs it); the k8s tests render with it")
    out = {"base": kustomize(ROOT / "k8s" / "base")}
    for overlay in OVERLAYS:
        out[overlay] = kustomize(ROOT / "k8s" / "overlays" / overlay)
    return out


@pytest.fixture(scope="session")
def crd_schemas() -> dict[str, Obj]:
    """kind -> the ``v1`` openAPIV3Schema of the KubeRay CRDs in ../shared/k8s-schemas (strict)."""
    if not SCHEMAS.is_dir():
        pytest.fail(f"{SCHEMAS} is missing: the KubeRay CRD schemas live in ../shared beside the repository")
    out = {}
    for name in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"):
        crd = yaml.load((SCHEMAS / name).read_text(), Loader=yaml.CSafeLoader)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        out[crd["spec"]["names"]["kind"]] = strict_schema(copy.deepcopy(v1["schema"]["openAPIV3Schema"]))
    return out
