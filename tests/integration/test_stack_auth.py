"""The local stack authenticates: Ray's job API and MLflow refuse strangers and serve the stack's own clients."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from eoforge.errors import ServiceError
from eoforge.stack import StackPorts, up
from eoforge.stack_probe import verify_stack
from eoforge.stack_secrets import MLFLOW_ADMIN, ensure_ray_token, mlflow_password, ray_token, write_mlflow_auth_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
EOFORGE_CLI = [sys.executable, "-c", "from eoforge.cli import main; main()"]


def _env_without_credentials() -> dict[str, str]:
    """This process's environment less every Ray token and MLflow login (what another local user has)."""
    drop = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO)])
    return env


def _token_path(stack) -> Path:
    return Path(stack.home) / "secrets" / "ray-token"


def _submit(env: dict[str, str], stack, entrypoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAY, "job", "submit", "--address", stack.ray_dashboard_url, "--", *entrypoint.split(" ", 2)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_job_api_refuses_requests_without_the_token(stack, tmp_path: Path) -> None:
    jobs = f"{stack.ray_dashboard_url}/api/jobs/"
    assert requests.get(jobs, timeout=10).status_code == 401
    assert requests.get(jobs, headers={"Authorization": "Bearer not-the-token"}, timeout=10).status_code == 403
    home = Path(stack.home)
    assert requests.get(jobs, headers={"Authorization": f"Bearer {ray_token(home)}"}, timeout=10).status_code == 200

    # `ray job submit` as another local user would run it: token mode with a token of their own
    wrong = tmp_path / "token"
    wrong.write_text("a-guess")
    env = {**_env_without_credentials(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}
    refused = _submit(env, stack, "python -c import sys; print('RAN')")
    assert refused.returncode != 0 and "RAN" not in refused.stdout
    assert "403" in refused.stdout + refused.stderr or "Forbidden" in refused.stdout + refused.stderr, refused.stderr
    # ... and with token auth switched off on their side (no token sent at all)
    env_off = {**_env_without_credentials(), "RAY_AUTH_MODE": "disabled"}
    refused = _submit(env_off, stack, "python -c import sys; print('RAN')")
    assert refused.returncode != 0 and "RAN" not in refused.stdout, refused.stdout[-2000:]


def test_a_job_submitted_with_the_token_runs_and_reaches_mlflow_with_the_stacks_login(stack) -> None:
    """The submitter hands over no MLflow login: the driver gets it from the head, and never prints it."""
    env = {**_env_without_credentials(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_token_path(stack))}
    probe = (
        "python -c import mlflow, os; "
        "e = mlflow.MlflowClient(os.environ['MLFLOW_TRACKING_URI']).create_experiment('from-a-job'); "
        "print('EXPERIMENT=' + e)"
    )
    done = _submit(env, stack, probe)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("EXPERIMENT="))
    experiment = line.removeprefix("EXPERIMENT=")
    auth = (MLFLOW_ADMIN, mlflow_password(Path(stack.home)))
    got = requests.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/experiments/get",
        params={"experiment_id": experiment},
        auth=auth,
        timeout=10,
    )
    assert got.status_code == 200 and got.json()["experiment"]["name"] == "from-a-job"
    assert auth[1] not in done.stdout + done.stderr


def test_mlflow_refuses_calls_without_the_stacks_login(stack) -> None:
    api = f"{stack.mlflow_url}/api/2.0/mlflow"
    password = mlflow_password(Path(stack.home))
    assert requests.get(f"{api}/experiments/search", params={"max_results": 1}, timeout=10).status_code == 401
    create = {"name": "anonymous-write"}
    assert requests.post(f"{api}/experiments/create", json=create, timeout=10).status_code == 401
    wrong = ("admin", "password1234")
    assert requests.post(f"{api}/experiments/create", json=create, auth=wrong, timeout=10).status_code == 401
    ours = (MLFLOW_ADMIN, password)
    made = requests.post(f"{api}/experiments/create", json={"name": "admin-write"}, auth=ours, timeout=10)
    assert made.status_code == 200, made.text
    # nothing was written by the refused calls
    names = requests.get(f"{api}/experiments/search", params={"max_results": 1000}, auth=ours, timeout=10)
    assert "anonymous-write" not in {e["name"] for e in names.json()["experiments"]}


def test_secrets_are_private_and_stay_out_of_the_record_and_logs(stack) -> None:
    home = Path(stack.home)
    assert stat.S_IMODE((home / "secrets").stat().st_mode) == 0o700
    for path in (home / "secrets").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    secrets = [mlflow_password(home), ray_token(home), (home / "secrets" / "mlflow-flask-key").read_text()]
    for path in [home / "stack.json", *(home / "logs").glob("*.log")]:
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], f"a secret is in {path}"


def test_up_again_keeps_the_running_stack_only_because_it_holds_our_secrets(stack, tmp_path: Path) -> None:
    home = Path(stack.home)
    token = ray_token(home)
    again = up(home, StackPorts.random())  # the recorded stack answers with our secrets: reused, not restarted
    assert (again.ray_pid, again.mlflow_pid, again.mlflow_url) == (stack.ray_pid, stack.mlflow_pid, stack.mlflow_url)
    assert ray_token(home) == token
    # the same services are not "ours" to a home with other secrets
    other = tmp_path / "other-home"
    ensure_ray_token(other)
    write_mlflow_auth_config(other)
    port = stack.mlflow_url.rsplit(":", 1)[1]
    with pytest.raises(ServiceError, match=rf"MLflow on port {port} .*refused this stack's admin login \(401\)"):
        verify_stack(stack.mlflow_url, stack.ray_dashboard_url, other)


def test_eoforge_env_hands_a_shell_what_it_needs_without_printing_secrets(stack) -> None:
    home = Path(stack.home)
    env = _env_without_credentials()
    env.pop("RAY_AUTH_MODE", None)
    exports = subprocess.run(
        [*EOFORGE_CLI, "env", "--home", str(home)], env=env, capture_output=True, text=True, timeout=60
    )
    assert exports.returncode == 0, exports.stderr
    assert mlflow_password(home) not in exports.stdout and ray_token(home) not in exports.stdout
    script = (
        'eval "$EXPORTS" && "$RAY" job list > /dev/null && echo RAY_OK && '
        '"$PY" -c "import mlflow; print(\'MLFLOW_OK\', len(mlflow.MlflowClient().search_experiments()) > 0)"'
    )
    shell_env = {**env, "EXPORTS": exports.stdout, "RAY": RAY, "PY": sys.executable}
    out = subprocess.run(["bash", "-c", script], env=shell_env, capture_output=True, text=True, timeout=300)
    assert "RAY_OK" in out.stdout and "MLFLOW_OK True" in out.stdout, (out.stdout + out.stderr)[-3000:]


def test_the_cli_logs_in_to_the_stacks_mlflow_by_itself(stack) -> None:
    env = {**_env_without_credentials(), "EOFORGE_HOME": stack.home}
    env.pop("MLFLOW_TRACKING_URI", None)  # found in stack.json, with the login beside it
    listed = subprocess.run([*EOFORGE_CLI, "models", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert mlflow_password(Path(stack.home)) not in listed.stdout + listed.stderr
