from __future__ import annotations

import signal
from pathlib import Path

import typer

from samsearch.cli.app import EXIT_PARTIAL, app, cli_home, echo_json, handle_errors


@app.command("worker")
@handle_errors
def worker(
    ctx: typer.Context,
    concurrency: int = typer.Option(1, "--concurrency", min=1,
                                    help="Claim loops in this process, sharing one loaded model."),
    batch: int = typer.Option(4, "--batch", min=1, help="Images claimed at a time by each loop."),
    lease: float = typer.Option(120.0, "--lease", min=0.1,
                                help="Seconds a claim lasts without renewal (renewed every third of it); "
                                     "a dead worker's images return to the queue after this."),
    max_attempts: int = typer.Option(5, "--max-attempts", min=1,
                                     help="Fail an image once its lease expired this many times."),
    drain: bool = typer.Option(False, "--drain",
                               help="Exit once nothing is pending or leased (default: wait for more work)."),
    poll: float = typer.Option(5.0, "--poll", min=0.05, help="Seconds between looks at an empty queue."),
    max_images: int = typer.Option(None, "--max-images", min=1, help="Stop after claiming this many images."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ..."),
    checkpoint: Path = typer.Option(None, "--checkpoint",
                                    help="Local weights for the queued runs' model (else the cached download)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Process queued images (`ingest --enqueue`): claim, segment, embed, store, mark done.

    Run as many as you like on Postgres + a Qdrant server; SQLite or the embedded vector store take one
    at a time. The model and settings come from each image's ingest run. SIGINT/SIGTERM finish the
    image in hand and give the rest back to the queue. Exit code 3 when some images failed.
    """
    from samsearch.jobs.worker import Worker, WorkerOptions

    options = WorkerOptions(batch=batch, concurrency=concurrency, lease_seconds=lease, max_attempts=max_attempts,
                            drain=drain, poll_seconds=poll, max_images=max_images, device=device,
                            checkpoint=checkpoint)
    with cli_home(ctx) as home:
        w = Worker(home, options, progress=not quiet)

        def graceful(signum, _frame):  # first signal: stop cleanly; a second one acts as usual
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)
            w.stop()

        signal.signal(signal.SIGTERM, graceful)
        signal.signal(signal.SIGINT, graceful)
        summary = w.run()
    if as_json:
        echo_json(summary.as_dict())
    else:
        typer.echo(
            f"worker {summary.owner}: ingested {summary.images_ingested} images ({summary.segments} segments), "
            f"failed {summary.images_failed}, leases lost {summary.leases_lost}, given back "
            f"{summary.images_released}, embed jobs {summary.embed_jobs} ({summary.segments_embedded} vectors), "
            f"in {summary.seconds:.1f}s ({summary.stopped_by})"
        )
        for f in summary.failures:
            typer.echo(f"failed: {f.path}: {f.reason}", err=True)
    if summary.images_failed:
        raise typer.Exit(EXIT_PARTIAL)
