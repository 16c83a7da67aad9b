"""``eoforge list objectives|backbones``: what a pretraining config can name.

One name per line with its one-line description, tab-separated, in name order. The registries
(and with them torch and timm) are imported only when a command runs.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="List the registered objectives and backbones.", no_args_is_help=True)


@app.command("objectives")
def objectives() -> None:
    """SSL objectives (config ``objective.kind``)."""
    from eoforge.ssl.objectives import list_objectives

    for name, description in list_objectives():
        typer.echo(f"{name}\t{description}")


@app.command("backbones")
def backbones() -> None:
    """Backbones (config ``model.backbone``; any timm model name also works)."""
    from eoforge.models.backbones import list_backbones

    for spec in list_backbones():
        typer.echo(f"{spec.name}\t{spec.description}")
