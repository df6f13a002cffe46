"""The Typer app, the global ``--home`` option, and the error → one-line-message boundary."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

from samsearch.errors import SamsearchError


class HomeAnywhereGroup(TyperGroup):
    """Accepts the global ``--home DIR`` after the subcommand too (``samsearch stats --home X``): it is
    moved in front of the subcommand before parsing. Arguments after ``--`` are left alone."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        front: list[str] = []
        rest: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                rest.extend(args[i:])
                break
            if arg == "--home" and i + 1 < len(args):
                front += args[i:i + 2]
                i += 2
                continue
            (front if arg.startswith("--home=") else rest).append(arg)
            i += 1
        return super().parse_args(ctx, front + rest)


app = typer.Typer(
    name="samsearch",
    cls=HomeAnywhereGroup,
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
                              help="Home folder holding the database and vectors [default: ~/.samsearch]. "
                                   "Accepted before or after the command."),
) -> None:
    ctx.obj = {"home": home}


@contextlib.contextmanager
def cli_home(ctx: typer.Context) -> Iterator[Any]:
    """The home named by ``--home`` (or ``SAMSEARCH_HOME``), open for the block and closed after it."""
    from samsearch.home import Home

    root = ctx.find_root()
    with Home((root.obj or {}).get("home")) as home:
        yield home


def home_model(home: Any, model: str | None, checkpoint: Path | None = None) -> str:
    """The SAM model a command runs: ``--model``, else the model of the home's vectors (``vit_b`` for a
    new home). A model other than the home's is refused here, before any weights are loaded or
    downloaded."""
    from samsearch.sam.models import model_ref
    from samsearch.sam.pooling import embedding_space

    held = home.embedding_space()
    name = model or (held.model if held is not None else "vit_b")
    home.check_embedding_space(embedding_space(model_ref(name, checkpoint)))
    return name


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
