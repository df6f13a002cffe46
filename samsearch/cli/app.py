"""The Typer app, the global ``--home`` option, and the error → one-line-message boundary."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from samsearch.errors import SamsearchError

app = typer.Typer(
    name="samsearch",
    help="Segment search and bulk labeling on Segment Anything (SAM) embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_ERROR = 1
EXIT_PARTIAL = 3


@app.callback()
def _global(
    ctx: typer.Context,
    home: Path = typer.Option(None, "--home", envvar="SAMSEARCH_HOME",
                              help="Home folder holding the database and vectors [default: ~/.samsearch]."),
) -> None:
    ctx.obj = {"home": home}


def open_home_from(ctx: typer.Context):
    from samsearch.home import Home

    return Home(ctx.obj.get("home") if ctx.obj else None)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Domain errors become ``Error: <one line>`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SamsearchError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted; finished images are stored, re-run the same command to go on.", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def echo_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
