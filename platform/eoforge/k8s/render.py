"""The RayJob for one config, as kustomize renders it.

``render_job("configs/pretrain/X.yaml", "gke")`` runs ``kubectl kustomize k8s/overlays/gke``
(the same manifests ``kubectl apply -k`` would apply), takes the RayJob template for the
config's kind (label ``eoforge.io/job: <kind>``) and sets only what depends on the config:

- ``metadata.name``: ``run.name`` made DNS-1035-safe (KubeRay's rule for RayJob names, at most
  47 characters);
- the ``--config`` argument of ``spec.entrypoint``: the config's path under ``configs/``, which
  the Ray pods read from the ConfigMap generated from ``configs/`` (``configs/kustomization.yaml``).

So for the config a base RayJob was written for, the result equals kustomize's object, and for
any other config it differs in exactly those two fields. The config is validated first, with the
environment of the Ray head pod (``EOFORGE_HOME``, ...), and its ``scaling`` is checked against
the overlay's worker groups (GPUs, CPUs per pod, maxReplicas).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eoforge.config import KINDS, PretrainConfig, load_config, load_raw
from eoforge.errors import ConfigError, ServiceError

JOB_LABEL = "eoforge.io/job"
MAX_RAYJOB_NAME = 47  # KubeRay: RayCluster name limit (53) minus the 6 characters it appends
_CONFIG_ARG = re.compile(r"(--config[ =])(\S+)")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Obj = dict[str, Any]


@dataclass(frozen=True)
class RenderedJob:
    """A RayJob and the ConfigMaps its pods mount (they must exist before its pods start)."""

    rayjob: Obj
    configmaps: list[Obj] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The RayJob's name."""
        return str(self.rayjob["metadata"]["name"])

    @property
    def namespace(self) -> str:
        """The RayJob's namespace (the overlay's)."""
        return str(self.rayjob["metadata"].get("namespace") or "default")


# --------------------------------------------------------------------------- kustomize
def find_project_dir(start: Path | None = None) -> Path:
    """The eoforge checkout (a folder holding ``k8s/overlays`` and ``configs``).

    Searched from ``start`` (default: the current directory) upwards, then from this package's
    location (an editable install lives in the checkout).

    Raises:
        ConfigError: none found.
    """
    here = (start or Path.cwd()).absolute()
    for candidate in [here, *here.parents, *Path(__file__).absolute().parents]:
        if (candidate / "k8s" / "overlays").is_dir() and (candidate / "configs").is_dir():
            return candidate
    raise ConfigError(
        f"no eoforge checkout (a folder with k8s/overlays/ and configs/) at or above {here}; "
        "run from the repository or pass --project-dir"
    )


def kustomize(path: Path) -> list[Obj]:
    """Render a kustomization with ``kubectl kustomize`` (or ``kustomize build``).

    Raises:
        ServiceError: neither tool is installed.
        ConfigError: the kustomization does not build (kustomize's message is included).
    """
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        raise ServiceError("rendering k8s/ needs kubectl (>= 1.27, it embeds kustomize) or kustomize on PATH")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def overlay_dir(project_dir: Path, overlay: str) -> Path:
    """``k8s/overlays/<overlay>``; ConfigError listing the overlays when it does not exist."""
    base = project_dir / "k8s" / "overlays"
    path = base / overlay
    if not (path / "kustomization.yaml").is_file():
        known = sorted(p.name for p in base.iterdir() if (p / "kustomization.yaml").is_file())
        raise ConfigError(f"--overlay {overlay!r}: no {path}/kustomization.yaml; overlays are {known}")
    return path


# --------------------------------------------------------------------------- names
def rayjob_name(run_name: str) -> str:
    """A DNS-1035 label of at most 47 characters derived from ``run.name``.

    Lower-cases, maps anything but ``[a-z0-9]`` to ``-``, prefixes ``job-`` when it would not
    start with a letter, and shortens long names to 40 characters plus a 6-character hash.
    """
    name = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")
    if not name:
        raise ConfigError(f"run.name {run_name!r}: no letters or digits to name a RayJob after")
    if not name[0].isalpha():
        name = f"job-{name}"
    if len(name) > MAX_RAYJOB_NAME:
        digest = hashlib.sha1(run_name.encode()).hexdigest()[:6]
        name = f"{name[:40].rstrip('-')}-{digest}"
    assert _DNS1035.match(name), name
    return name


# --------------------------------------------------------------------------- helpers
def _pod_env(spec: Obj) -> dict[str, str]:
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


@contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """Temporarily add variables that are not set (config validation as the pod sees it)."""
    added = {k: v for k, v in extra.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _cpu(quantity: Any) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _groups(spec: Obj) -> list[tuple[str, int, float, int]]:
    """(groupName, GPUs per pod, CPUs per pod, maxReplicas) of each worker group."""
    rows = []
    for group in spec.get("workerGroupSpecs", []):
        limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        gpus = int(limits.get("nvidia.com/gpu", 0))
        rows.append((group["groupName"], gpus, _cpu(limits.get("cpu", 0)), int(group["maxReplicas"])))
    return rows


def check_capacity(cfg: PretrainConfig, spec: Obj, overlay: str) -> None:
    """Fail early when ``scaling`` cannot fit the overlay's worker groups.

    Raises:
        ConfigError: no GPU group for a GPU job, more workers than GPUs/CPUs at maxReplicas,
            or more CPUs per worker than one pod has.
    """
    s = cfg.scaling
    groups = [g for g in _groups(spec) if (g[1] > 0) == s.use_gpu]
    what = "GPU" if s.use_gpu else "CPU-only"
    if not groups:
        raise ConfigError(
            f"scaling.use_gpu: {str(s.use_gpu).lower()}, but overlay {overlay!r} has no {what} worker group; "
            f"{'use a GPU overlay (gke, eks) or set scaling.use_gpu: false' if s.use_gpu else 'add one'}"
        )
    pod_cpus = max(g[2] for g in groups)
    if s.cpus_per_worker > pod_cpus:
        raise ConfigError(
            f"scaling.cpus_per_worker: {s.cpus_per_worker:g} CPUs, but a {what} worker pod in overlay "
            f"{overlay!r} has at most {pod_cpus:g}"
        )
    if s.use_gpu:
        capacity = sum(g[1] * g[3] for g in groups)
        unit = "GPUs (maxReplicas x nvidia.com/gpu)"
    else:
        capacity = sum(int(g[2] // s.cpus_per_worker) * g[3] for g in groups)
        unit = f"workers of {s.cpus_per_worker:g} CPUs (maxReplicas x CPUs per pod)"
    if s.num_workers > capacity:
        raise ConfigError(
            f"scaling.num_workers: {s.num_workers}, but the {what} worker groups of overlay {overlay!r} "
            f"hold at most {capacity} {unit}; lower num_workers or raise maxReplicas"
        )


def _referenced_configmaps(obj: Any) -> set[str]:
    """Names of ConfigMaps a manifest mounts or reads env from."""
    names: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("configMap", "configMapRef", "configMapKeyRef") and isinstance(value, dict):
                names.add(value["name"])
            else:
                names |= _referenced_configmaps(value)
    elif isinstance(obj, list):
        for item in obj:
            names |= _referenced_configmaps(item)
    return names


def _config_map_for(spec: Obj, folder: str, objects: list[Obj]) -> Obj:
    """The ConfigMap mounted at ``<workingDir>/configs/<folder>`` in the head pod."""
    pod = spec["headGroupSpec"]["template"]["spec"]
    container = pod["containers"][0]
    mount_path = f"{container.get('workingDir', '/home/ray/eoforge')}/configs/{folder}"
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    volume = volumes.get(mounts.get(mount_path, ""), {})
    cm_name = volume.get("configMap", {}).get("name")
    if not cm_name:
        raise ConfigError(
            f"configs/{folder}/ is not mounted into the Ray pods at {mount_path} (k8s/base/raycluster.yaml)"
        )
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == cm_name:
            return obj
    raise ConfigError(f"ConfigMap {cm_name} (configs/{folder}/) is missing from the rendered overlay")


# --------------------------------------------------------------------------- render
def render_job(
    config_path: str | Path,
    overlay: str,
    project_dir: Path | None = None,
    objects: list[Obj] | None = None,
) -> RenderedJob:
    """The RayJob (and the ConfigMaps it mounts) that runs ``config_path`` on ``overlay``.

    Args:
        config_path: A config under ``<project>/configs/<folder>/``.
        overlay: Name of a folder in ``k8s/overlays/`` (gke, eks, local).
        project_dir: The checkout (default: found from the current directory).
        objects: The overlay's rendered objects, when already at hand (default: kustomize).

    Raises:
        ConfigError: invalid config, a config outside ``configs/`` or not in its ConfigMap,
            no RayJob template for its kind, or scaling that does not fit the overlay.
    """
    root = (project_dir or find_project_dir()).absolute()
    path = Path(config_path)
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    try:
        rel = path.relative_to(root.resolve())
    except ValueError:
        raise ConfigError(f"{config_path}: a config for Kubernetes must be inside {root}/configs/") from None
    if len(rel.parts) != 3 or rel.parts[0] != "configs":
        raise ConfigError(f"{config_path}: expected configs/<kind folder>/<name>.yaml, got {rel.as_posix()}")
    kind = load_raw(path).get("kind")
    if objects is None:
        objects = kustomize(overlay_dir(root, overlay))
    templates = [
        o for o in objects if o.get("kind") == "RayJob" and o["metadata"].get("labels", {}).get(JOB_LABEL) == kind
    ]
    if kind not in KINDS:
        raise ConfigError(f"{config_path}: kind {kind!r} has no config model yet; config kinds are {sorted(KINDS)}")
    if len(templates) != 1:
        have = sorted(
            {o["metadata"].get("labels", {}).get(JOB_LABEL, "?") for o in objects if o.get("kind") == "RayJob"}
        )
        raise ConfigError(
            f"{config_path}: overlay {overlay!r} has {len(templates)} RayJobs labelled {JOB_LABEL}={kind} "
            f"(need exactly one; RayJob labels there: {have})"
        )
    job = copy.deepcopy(templates[0])
    spec = job["spec"]["rayClusterSpec"]
    with _environ(_pod_env(spec)):
        cfg = load_config(path)
    if isinstance(cfg, PretrainConfig):
        check_capacity(cfg, spec, overlay)

    folder, filename = rel.parts[1], rel.parts[2]
    configmap = _config_map_for(spec, folder, objects)
    if filename not in configmap.get("data", {}):
        raise ConfigError(
            f"{rel.as_posix()} is not in ConfigMap {configmap['metadata']['name']} that the Ray pods mount: "
            f"add it to the files of configMapGenerator eoforge-configs-{folder} in configs/kustomization.yaml"
        )
    entrypoint = job["spec"].get("entrypoint", "")
    if not _CONFIG_ARG.search(entrypoint):
        raise ConfigError(f"RayJob {job['metadata']['name']}: entrypoint {entrypoint!r} has no --config argument")
    job["spec"]["entrypoint"] = _CONFIG_ARG.sub(lambda m: m.group(1) + rel.as_posix(), entrypoint, count=1)
    run = getattr(cfg, "run", None)
    job["metadata"]["name"] = rayjob_name(getattr(run, "name", None) or path.stem)

    wanted = _referenced_configmaps(job)
    configmaps = [o for o in objects if o.get("kind") == "ConfigMap" and o["metadata"]["name"] in wanted]
    return RenderedJob(job, configmaps)
