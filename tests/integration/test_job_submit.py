"""`ray job submit --working-dir .` as the README and `make demo` run it, with the log in the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _copy_of_the_repo(dest: Path) -> Path:
    """The tracked files of this checkout (what a fresh clone holds), copied to `dest`."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_submit_with_its_log_written_into_the_repo_root(stack, tmp_path: Path) -> None:
    """The CLI writes "Uploading package ..." into demo.log while Ray hashes and zips the folder.

    Without .rayignore's whitelist the zip no longer matches the hash and the job fails with
    "Failed to download runtime_env file package"; with it, demo.log is never part of the upload.
    """
    repo = _copy_of_the_repo(tmp_path / "clone")
    (repo / "scratch.bin").write_bytes(os.urandom(1 << 20))  # a stray file users leave lying around
    probe = "import json, pathlib; print('ROOT=' + json.dumps(sorted(p.name for p in pathlib.Path('.').iterdir())))"
    env = {**os.environ, "RAY_ADDRESS": stack.ray_dashboard_url}
    with open(repo / "demo.log", "w") as log:  # `make demo > demo.log 2>&1`
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "ray"),
                "job",
                "submit",
                "--working-dir",
                ".",
                "--",
                "python",
                "-c",
                probe,
            ],
            cwd=repo,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=300,
        )
    text = (repo / "demo.log").read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Uploading package" in text and "succeeded" in text, text[-3000:]
    root = json.loads(next(line for line in text.splitlines() if line.startswith("ROOT=")).removeprefix("ROOT="))
    assert {"platform", "jobs", "configs", "pyproject.toml"} <= set(root)
    assert not {"demo.log", "scratch.bin", "tests", ".git"} & set(root), root
