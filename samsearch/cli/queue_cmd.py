from __future__ import annotations

import typer

from samsearch.cli.app import app, cli_home, echo_json, handle_errors

queue_app = typer.Typer(help="The ingest work queue (fed by `ingest --enqueue`, drained by `worker`).",
                        no_args_is_help=True)
app.add_typer(queue_app, name="queue")


@queue_app.command("status")
@handle_errors
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Images pending / running / done / failed, expired leases, the workers holding leases now, and the
    queued embed jobs."""
    from samsearch.jobs.work_queue import queue_status

    with cli_home(ctx) as home:
        data = queue_status(home)
    if as_json:
        echo_json(data)
        return
    typer.echo(f"pending {data['pending']}, running {data['running']}, done {data['done']}, "
               f"failed {data['failed']}")
    if data["expired_leases"]:
        typer.echo(f"{data['expired_leases']} running images have an expired lease (their worker died); "
                   "a worker takes them again, or `samsearch doctor --repair` re-queues them now")
    if data["running_without_lease"]:
        typer.echo(f"{data['running_without_lease']} images are running under a plain `ingest` (no lease)")
    jobs = data["embed_jobs"]
    if any(jobs.values()):
        typer.echo(f"embed jobs: queued {jobs['queued']}, done {jobs['done']}, failed {jobs['failed']}")
    for owner, n in data["workers"].items():
        typer.echo(f"worker {owner}: {n} images leased")
    if len(data["datasets"]) > 1:
        for name, d in data["datasets"].items():
            typer.echo(f"  {name}: pending {d['pending']}, running {d['running']}, done {d['done']}, "
                       f"failed {d['failed']}")


@queue_app.command("retry-failed")
@handle_errors
def retry_failed(
    ctx: typer.Context,
    dataset: str = typer.Option(None, "--dataset", help="Only images of this dataset."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Queue failed images again, with the settings of the run that failed them."""
    from samsearch.jobs.work_queue import retry_failed as retry

    with cli_home(ctx) as home:
        data = retry(home, dataset)
    if as_json:
        echo_json(data)
        return
    typer.echo(f"re-queued {data['requeued']} failed images")
    if data["unreadable_left"]:
        typer.echo(f"{data['unreadable_left']} files could not be read at all; once readable, queue them with "
                   "`samsearch ingest --enqueue PATH`")
