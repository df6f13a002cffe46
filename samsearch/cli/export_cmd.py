"""The ``export`` command group; each format adds its command to ``export_app`` in its own module."""

from __future__ import annotations

import typer

from samsearch.cli.app import app

export_app = typer.Typer(help="Export segments and labels for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")
