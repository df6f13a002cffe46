"""``samsearch serve``: the JSON API and the review page over the home (see README, "Serve")."""

from __future__ import annotations

import typer

from samsearch.cli.app import app, cli_home, handle_errors
from samsearch.errors import InputError


@app.command("serve")
@handle_errors
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="TCP port to listen on."),
    read_only: bool = typer.Option(False, "--read-only", help="Refuse every write (labels, cluster names): 403."),
    token: str = typer.Option(None, "--token", envvar="SAMSEARCH_SERVE_TOKEN", metavar="T",
                              help="Require 'Authorization: Bearer T' on every /api request (401 otherwise)."),
) -> None:
    """Serve the home over HTTP: the JSON API under /api and a review page at / (Ctrl-C stops)."""
    from samsearch.serve.app import is_loopback, run_server

    if not is_loopback(host) and not token:  # checked before the home is opened
        raise InputError(f"binding to {host} exposes the home to the network: give --token T (or use 127.0.0.1)")
    with cli_home(ctx) as home:
        typer.echo(f"serving {home.root} on http://{host}:{port}/ "
                   f"({'read-only' if read_only else 'read-write'}{', token required' if token else ''})", err=True)
        run_server(home, host=host, port=port, read_only=read_only, token=token)
