"""``eoforge k8s``: render a config's RayJob, submit it, follow its status and logs.

    eoforge k8s render --config configs/pretrain/cluster-example.yaml --overlay gke
    eoforge k8s submit --config configs/pretrain/cluster-example.yaml --overlay gke
    eoforge k8s status eoforge-pretrain-example --wait
    eoforge k8s logs eoforge-pretrain-example

Errors are :class:`~eoforge.errors.EoforgeError`; ``eoforge``'s main turns them into one line
and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

app = typer.Typer(help="Render, submit and follow KubeRay RayJobs (k8s/ overlays).", no_args_is_help=True)

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="A config under configs/ (e.g. configs/pretrain/X.yaml).")
]
OverlayOpt = Annotated[str, typer.Option("--overlay", "-o", help="k8s/overlays/<overlay>: gke, eks or local.")]
ProjectOpt = Annotated[
    Path | None,
    typer.Option("--project-dir", help="The eoforge checkout (default: found from the current directory)."),
]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: the overlay's, eoforge).")
]
KubeconfigOpt = Annotated[
    str | None,
    typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file (default ~/.kube/config)."),
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: the current one).")]
NameArg = Annotated[str, typer.Argument(help="RayJob name (run.name, DNS-safe; `eoforge k8s submit` prints it).")]
DEFAULT_NAMESPACE = "eoforge"


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def _print_summary(summary: dict[str, Any]) -> None:
    line = f"{summary['name']}: {summary['deployment']}"
    if summary["job"]:
        line += f" (Ray job {summary['job']})"
    if summary["message"]:
        line += f": {summary['message']}"
    typer.echo(line)


@app.command()
def render(
    config: ConfigOpt,
    overlay: OverlayOpt,
    project_dir: ProjectOpt = None,
    with_configmaps: bool = typer.Option(
        False, "--with-configmaps", help="Also print the ConfigMaps it mounts (for kubectl apply -f -)."
    ),
) -> None:
    """Print the RayJob that runs CONFIG on OVERLAY (the object kustomize renders for it)."""
    from eoforge.k8s.render import render_job

    job = render_job(config, overlay, project_dir)
    typer.echo(_dump([*job.configmaps, job.rayjob] if with_configmaps else [job.rayjob]), nl=False)


@app.command()
def submit(
    config: ConfigOpt,
    overlay: OverlayOpt,
    project_dir: ProjectOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    wait: bool = typer.Option(False, "--wait", help="Then follow the status until the job ends."),
    timeout: float = typer.Option(86400.0, help="With --wait: give up after this many seconds."),
) -> None:
    """Create the RayJob for CONFIG (and the ConfigMaps it mounts) in the cluster."""
    from eoforge.k8s.client import api_client, wait_for
    from eoforge.k8s.client import submit as submit_job
    from eoforge.k8s.render import render_job

    job = render_job(config, overlay, project_dir)
    api = api_client(kubeconfig, context)
    created = submit_job(job, api, namespace)
    ns, name = created["metadata"]["namespace"], created["metadata"]["name"]
    typer.echo(f"created RayJob {ns}/{name} (overlay {overlay}, config {config})")
    typer.echo(f"  status: eoforge k8s status {name} -n {ns} --wait")
    typer.echo(f"  logs:   eoforge k8s logs {name} -n {ns}")
    if wait:
        final = wait_for(api, name, ns, timeout, _print_summary)
        if final["deployment"] != "Complete" or final["job"] != "SUCCEEDED":
            raise typer.Exit(1)


@app.command()
def status(
    name: NameArg,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    wait: bool = typer.Option(False, "--wait", help="Poll until the job ends (exit 1 unless it succeeded)."),
    timeout: float = typer.Option(86400.0, help="With --wait: give up after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the status summary as JSON."),
) -> None:
    """Show a RayJob's deployment and job status."""
    from eoforge.k8s.client import api_client, get_rayjob, summarize, wait_for

    api = api_client(kubeconfig, context)
    ns = namespace or DEFAULT_NAMESPACE
    if wait:
        summary = wait_for(api, name, ns, timeout, _print_summary)
        if summary["deployment"] != "Complete" or summary["job"] != "SUCCEEDED":
            raise typer.Exit(1)
        return
    summary = summarize(get_rayjob(api, name, ns))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if value not in ("", None):
                typer.echo(f"{key + ':':<16} {value}")


@app.command()
def logs(
    name: NameArg,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    follow: bool = typer.Option(True, "--follow/--no-follow", "-f", help="Stream until the job ends."),
) -> None:
    """Print the job driver's output (the RayJob's submitter pod log)."""
    from eoforge.k8s.client import api_client, stream_logs

    api = api_client(kubeconfig, context)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stream_logs(api, name, namespace or DEFAULT_NAMESPACE, write, follow=follow)
