"""``eoforge`` command line: everything a person does by hand.

Input errors (:class:`~eoforge.errors.EoforgeError`) print one message and exit with code 2,
without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from eoforge.discovery import app as list_app
from eoforge.errors import EoforgeError
from eoforge.redact import redact

app = typer.Typer(
    help="eoforge: self-supervised S1/S2 pretraining on Ray + MLflow + KubeRay.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
catalog_app = typer.Typer(
    help="STAC catalogs: make the demo catalog, build items for local data.", no_args_is_help=True
)
models_app = typer.Typer(help="The MLflow model registry.", no_args_is_help=True)
predict_app = typer.Typer(help="Predictions and embeddings (jobs/predict.py makes them).", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(models_app, name="models")
app.add_typer(predict_app, name="predict")
app.add_typer(list_app, name="list")

HomeOpt = Annotated[Path, typer.Option("--home", envvar="EOFORGE_HOME", help="State directory of the local stack.")]


def _home_default() -> Path:
    return Path(os.environ.get("EOFORGE_HOME", ".eoforge"))


def _print_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- stack
@app.command()
def up(
    home: HomeOpt = _home_default(),
    dashboard_port: int = typer.Option(8265, help="Ray dashboard / job API port."),
    ray_port: int = typer.Option(6379, help="Ray GCS port."),
    client_port: int = typer.Option(10001, help="Ray client server port."),
    mlflow_port: int = typer.Option(5000, help="MLflow tracking server port."),
    num_cpus: int | None = typer.Option(None, help="Logical CPUs the Ray head advertises (default max(4, cores))."),
    object_store_mb: int | None = typer.Option(
        None, min=100, help="The Ray head's object store, MiB (default min(2048, 30 % of RAM))."
    ),
    random_ports: bool = typer.Option(False, help="Pick free ports for every service (tests, second stacks)."),
) -> None:
    """Start the local stack: a Ray head and an MLflow server on 127.0.0.1."""
    from eoforge.stack import StackPorts
    from eoforge.stack import up as stack_up

    ports = StackPorts.random() if random_ports else StackPorts(ray_port, dashboard_port, client_port, mlflow_port)
    typer.echo("starting MLflow and the Ray head (about 20 s)...", err=True)
    state = stack_up(home, ports, num_cpus, object_store_mb)
    typer.echo(f"Ray dashboard: {state.ray_dashboard_url}  (RAY_ADDRESS={state.ray_dashboard_url})")
    typer.echo(f"MLflow:        {state.mlflow_url}  (MLFLOW_TRACKING_URI={state.mlflow_url})")
    typer.echo(f"state:         {state.home}/stack.json")
    typer.echo(f'secrets:       {state.home}/secrets/  (clients: eval "$(eoforge env --home {state.home})")')


@app.command("env")
def env_(home: HomeOpt = _home_default()) -> None:
    """Print ``export`` lines for a shell to reach the running stack: ``eval "$(eoforge env)"``.

    RAY_ADDRESS, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (for ``ray job submit``, ``ray.init``),
    MLFLOW_TRACKING_URI and the MLflow login; the password is read from its file by the shell,
    so it is never printed.
    """
    from eoforge.stack import read_state
    from eoforge.stack_secrets import shell_exports

    state = read_state(home.absolute())
    if state is None:
        raise EoforgeError(f"env: no stack recorded in {home.absolute()}; start it with `eoforge up`")
    typer.echo(shell_exports(home, state.ray_dashboard_url, state.mlflow_url))


@app.command()
def down(home: HomeOpt = _home_default()) -> None:
    """Stop the local stack started by ``eoforge up`` (by PID, where start time and command line still match)."""
    from eoforge.stack import down as stack_down

    report = stack_down(home)
    if report is None:
        typer.echo(f"nothing recorded in {home.absolute()}")
        return
    for service, what in report.items():
        typer.echo(f"{service}: {what}")


@app.command()
def status(
    home: HomeOpt = _home_default(),
    field: str | None = typer.Option(None, help="Print just this field (e.g. ray_dashboard_url)."),
) -> None:
    """Report the local stack; exit code 1 when it is not running."""
    from eoforge.stack import status as stack_status

    report = stack_status(home)
    if field:
        if field not in report:
            raise EoforgeError(f"status: no field {field!r}; fields are {sorted(report)}")
        typer.echo(str(report[field]))
    else:
        _print_json(report)
    if not report.get("running"):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- catalog
@catalog_app.command("demo")
def catalog_demo(
    out: Annotated[Path, typer.Option(help="Output directory of the static catalog.")],
    scenes: int = typer.Option(4, min=1, help="Number of places."),
    seed: int = typer.Option(0, min=0, help="Random seed (same seed -> same catalog)."),
    dates: int = typer.Option(3, min=1, help="Acquisitions per place."),
    size_px: int = typer.Option(256, min=64, help="Scene side in 10 m pixels."),
    pool_scenes: int = typer.Option(
        0, min=0, help="Also write an unlabelled pool of this many other places under OUT/pool (for pretraining)."
    ),
    pool_dates: int = typer.Option(4, min=1, help="Pool acquisitions per place, spread over a year."),
    pool_layout_seed: int = typer.Option(1, min=0, help="Where the pool's places lie (not the labelled layout)."),
) -> None:
    """Write the synthetic S1/S2/label demo catalog (COGs + STAC + ndjson for pypgstac), and its pool."""
    from eoforge.demo.catalog import write_demo_catalog
    from eoforge.demo.pool import write_pool_catalog

    cat = write_demo_catalog(out, scenes=scenes, seed=seed, dates_per_scene=dates, size_px=size_px)
    typer.echo(f"catalog: {cat.catalog_json}")
    typer.echo(f"pgstac ndjson: {cat.collections_ndjson}, {cat.items_ndjson}")
    if pool_scenes:
        pool = write_pool_catalog(
            out / "pool", pool_scenes, seed, pool_dates, size_px, layout_seed=pool_layout_seed, labelled_scenes=scenes
        )
        typer.echo(f"pool: {pool.catalog_json} ({len(pool.s2_item_ids)} S2 acquisitions, unlabelled)")


@catalog_app.command("bigearthnet")
def catalog_bigearthnet(
    src: Annotated[Path, typer.Option(help="BigEarthNet-MM folder holding S1/ and S2/ patch folders.")],
    out: Annotated[Path, typer.Option(help="Output directory of the static catalog.")],
) -> None:
    """Build a static STAC catalog for BigEarthNet-MM patches (S1 + S2 items, proj metadata)."""
    from eoforge.demo.bigearthnet import write_bigearthnet_catalog

    path = write_bigearthnet_catalog(src, out)
    typer.echo(f"catalog: {path}")


@catalog_app.command("sen12ms")
def catalog_sen12ms(
    src: Annotated[Path, typer.Option(help="SEN12MS or DFC2020 folder holding the ROIs*/ folders (or one of them).")],
    out: Annotated[Path, typer.Option(help="Output directory of the static catalog (item JSON + per-band VRTs).")],
    layout: Annotated[
        str, typer.Option(help="sen12ms (s1_/s2_/lc_ folders, IGBP labels) or dfc2020 (s1_/s2_/dfc_, DFC labels).")
    ] = "sen12ms",
) -> None:
    """Build a static STAC catalog for SEN12MS / DFC2020 patches (S2 L1C, S1 dB, raw land-cover labels)."""
    from eoforge.demo.sen12ms import LAYOUTS, write_sen12ms_catalog

    if layout not in LAYOUTS:
        raise typer.BadParameter(f"{layout!r}; choose one of {', '.join(LAYOUTS)}", param_hint="--layout")
    path = write_sen12ms_catalog(src, out, layout=layout)
    typer.echo(f"catalog: {path}")
    typer.echo(f"collections: {layout}-s2, {layout}-s1, {layout}-labels (asset 'labels', raw values)")


# --------------------------------------------------------------------------- plan
@app.command()
def plan(
    config: Annotated[Path, typer.Option(help="kind: data config.")],
    out: Annotated[
        str, typer.Option(help="GeoParquet chip plan to write: a local path, s3://bucket/key.parquet, gs://...")
    ],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. chips.size_px=32")] = None,
) -> None:
    """Search the catalog, pair S1/S2, lay the chip grid and write the plan (GeoParquet)."""
    from eoforge.config import DataConfig, load_config
    from eoforge.plan.build import build_plan

    cfg = load_config(config, DataConfig, set_ or [])
    digest, n = build_plan(cfg, out)
    typer.echo(f"plan: {out} ({n} chips, hash {digest})")


# --------------------------------------------------------------------------- models
def _tracking(uri: str | None) -> str:
    from eoforge.tracking.runs import resolve_tracking_uri

    return resolve_tracking_uri(uri)


@models_app.command("list")
def models_list(tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI")) -> None:
    """Registered models, their aliases and versions."""
    from eoforge.tracking.registry import list_models

    rows = list_models(_tracking(tracking_uri))
    if not rows:
        typer.echo("no registered models")
    for row in rows:
        aliases = ", ".join(f"@{a}->v{v}" for a, v in sorted(row["aliases"].items())) or "-"
        typer.echo(f"{row['name']}  versions={row['versions']}  latest=v{row['latest']}  aliases: {aliases}")


@models_app.command("show")
def models_show(
    spec: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/VERSION (models:/ prefix optional).")],
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI"),
) -> None:
    """One model version: source, run, metrics, plan hash."""
    from eoforge.tracking.registry import show_model

    _print_json(show_model(_tracking(tracking_uri), spec))


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to point the alias at.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI"),
) -> None:
    """Set an alias by hand (the sweep's champion rule does it automatically)."""
    from eoforge.tracking.registry import promote

    typer.echo(promote(_tracking(tracking_uri), name, version, alias))


@models_app.command("migrate")
def models_migrate(
    uri: Annotated[str, typer.Argument(help="A version an earlier eoforge stored as a pickle: models:/NAME/VERSION.")],
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Unpickle it (runs code from the artifact store): only if you trust its writers."
    ),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI"),
) -> None:
    """Re-register a pickled (pre-weights) model version as weights + card; its aliases move to the new version."""
    from eoforge.finetune.registered import migrate_legacy

    done = migrate_legacy(_tracking(tracking_uri), uri, trust_pickle=trust_pickle)
    moved = ", ".join(f"@{a}" for a in done.aliases) or "none"
    typer.echo(
        f"{done.source} -> {done.uri} (weights + card; outputs differ by {done.max_abs_diff:.2g}); "
        f"aliases moved: {moved}"
    )


# --------------------------------------------------------------------------- predict
@predict_app.command("quicklook")
def predict_quicklook(
    collection: Annotated[str, typer.Option(help="collection.json of a predict run.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    reference: Annotated[str | None, typer.Option(help="A class raster to show beside it (e.g. labels).")] = None,
    item: Annotated[str | None, typer.Option(help="Source S2 item id (default: the first).")] = None,
) -> None:
    """Draw a predict run's class map beside a reference map; prints the PNG and the collection."""
    from eoforge.predict.quicklook import quicklook

    png = quicklook(collection, out, reference, item)
    typer.echo(f"quicklook: {png}")
    typer.echo(f"predictions: {collection}")


def _register_k8s() -> None:
    try:
        from eoforge.k8s.cli import app as k8s_app
    except ImportError:  # the k8s module is optional at import time
        return
    app.add_typer(k8s_app, name="k8s", help="Render and submit KubeRay jobs.")


_register_k8s()


def main() -> None:
    """Console entrypoint with one-line errors and exit code 2 for bad input."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        app()
    except EoforgeError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(2)
