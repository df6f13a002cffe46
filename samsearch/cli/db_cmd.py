from __future__ import annotations

import typer

from samsearch.cli.app import app, cli_home, handle_errors

db_app = typer.Typer(help="Metadata database commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@handle_errors
def upgrade(ctx: typer.Context) -> None:
    """Apply pending schema migrations (also done automatically on first use)."""
    with cli_home(ctx) as home:
        home.db.upgrade()
        typer.echo(f"{home.db.safe_url}: schema at revision {home.db.current_revision()}")
