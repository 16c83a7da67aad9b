"""The Dockerfile, read statically (no Docker engine here): base image, non-root, layer order,
no secrets, pinned extras, a .dockerignore that keeps the context small and the needed files in."""

from __future__ import annotations

import fnmatch
import re

from tests.k8s.helpers import ROOT

SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|API_KEY)", re.IGNORECASE)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_image_is_ray_2_60_gpu_for_python_3_12() -> None:
    ins = _instructions()
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) == 1
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0])
    assert image == "rayproject/ray:2.60.0-py312-gpu"


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [a for w, a in _instructions() if w == "USER"]
    assert users, "no USER: the image would run as whatever the base says"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    ins = _instructions()
    copies = [(i, a) for i, (w, a) in enumerate(ins) if w in ("COPY", "ADD")]
    assert not [a for _, a in copies if re.search(r"(^|\s)\.\s", a + " ")], "COPY . busts the dependency cache"
    deps_copy = next(i for i, a in copies if a.endswith("pyproject.toml ./"))
    deps_install = next(i for i, (w, a) in enumerate(ins) if w == "RUN" and "pip install -r" in a)
    first_source = min(i for i, a in copies if re.search(r"\b(platform|jobs|configs)\b", a))
    assert deps_copy < deps_install < first_source
    assert all(i > deps_install for i, a in copies if not a.endswith("pyproject.toml ./"))
    assert any(w == "RUN" and "pip install --no-deps ." in a for w, a in ins[first_source:])


def test_no_secrets_and_pinned_extras() -> None:
    ins = _instructions()
    for word, args in ins:
        if word in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRETISH.search(n)], args
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|kubeconfig|credentials|\.aws|\.kube", args), args
    pip = " ".join(a for w, a in ins if w == "RUN" and "pip install -r" in a)
    extras = re.findall(r"([A-Za-z0-9_.-]+==[^\s]+)", pip)
    assert {e.split("==")[0] for e in extras} == {"psycopg2-binary", "boto3", "google-cloud-storage"}


def test_dockerfile_says_how_to_build_and_push() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "docker build -t" in text and "docker push" in text


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for path in (
        ".git",
        ".venv",
        ".eoforge",
        "tests",
        "platform/eoforge/__pycache__",
        "platform/eoforge.egg-info",
    ):
        assert ignored(path), path
    for path in (
        "pyproject.toml",
        "README.md",
        "platform/eoforge/config.py",
        "jobs/pretrain.py",
        "configs/pretrain",
    ):
        assert not ignored(path), path


def test_base_image_python_matches_requires_python() -> None:
    import tomllib

    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    ins = _instructions()
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    tag = re.search(r"-py3(\d+)-", args["RAY_IMAGE"])
    assert tag, args["RAY_IMAGE"]
    assert f">=3.{tag.group(1)}" in spec and f"<3.{int(tag.group(1)) + 1}" in spec, (spec, args["RAY_IMAGE"])
