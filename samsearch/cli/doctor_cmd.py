from __future__ import annotations

import typer

from samsearch.cli.app import EXIT_PARTIAL, app, cli_home, echo_json, handle_errors


@app.command("doctor")
@handle_errors
def doctor(
    ctx: typer.Context,
    repair: bool = typer.Option(False, "--repair",
                                help="Fix what is safe to fix: re-queue images whose vectors are missing, "
                                     "delete vectors that have no segment, release expired leases, rewrite "
                                     "payloads that disagree with SQL from SQL."),
    full: bool = typer.Option(False, "--full",
                              help="Compare the filtered payload fields (dataset, label, cluster, ...) of every "
                                   "segment with SQL, not a sample of 2000."),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete",
        help="With --repair: delete orphan vectors even when the evidence could mean a wrong database (SQL "
             "side empty, models disagree, more than 1000 orphans or more than half of all vectors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Check that SQL and the vector store agree: segments missing a vector, vectors with no segment,
    payload fields filters read (dataset, label, cluster, ...) that differ from SQL (a sample, or every
    segment with --full), images stuck under an expired lease, and model mismatches.

    Exit code 0 when all is well (or was repaired), 3 when problems remain.
    """
    from samsearch.reports.doctor import diagnose

    with cli_home(ctx) as home:
        report = diagnose(home, repair=repair, progress=not quiet, allow_mass_delete=allow_mass_delete,
                          full=full)
    if as_json:
        echo_json(report.as_dict())
    else:
        r, fixed = report, report.repaired
        typer.echo(f"segments:          {r.segments} in {r.database}")
        typer.echo(f"vectors:           {r.vectors} in {r.vector_store}")
        typer.echo(f"missing vectors:   {r.missing_vectors} segments ({r.images_missing_vectors} images)"
                   + (f"; re-queued {fixed['images_requeued']} images for `samsearch worker`"
                      if "images_requeued" in fixed else ""))
        typer.echo(f"orphan vectors:    {r.orphan_vectors}"
                   + (f"; deleted {fixed['orphan_vectors_deleted']}" if "orphan_vectors_deleted" in fixed else "")
                   + (f" (+{r.in_flight_vectors} of images being processed now)" if r.in_flight_vectors else ""))
        typer.echo(f"expired leases:    {r.expired_leases}"
                   + (f"; released {fixed['leases_released']}" if "leases_released" in fixed else ""))
        if r.running_without_lease:
            typer.echo(f"running, no lease: {r.running_without_lease} (a plain `ingest` runs or was interrupted: "
                       "re-run it)")
        scope = "all" if r.full or r.payloads_checked >= r.segments else "a sample of"
        typer.echo(f"payload contents:  {r.payload_mismatches} of {scope} {r.payloads_checked} segments disagree "
                   "with SQL"
                   + (f" ({', '.join(f'{k}: {n}' for k, n in sorted(r.mismatched_fields.items()))})"
                      if r.mismatched_fields else "")
                   + (f"; rewrote {fixed['payloads_rewritten']} from SQL" if "payloads_rewritten" in fixed else ""))
        for line in r.mismatch_examples if not fixed.get("payloads_rewritten") else []:
            typer.echo(f"  e.g. {line}")
        typer.echo(f"model:             {'; '.join(r.model_problems) if r.model_problems else 'consistent'}")
        for name, sp in r.spaces.items():
            fixed_sp = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sp["repaired"].items())
            typer.echo(f"space {name}: {sp['vectors']} vectors, {sp['missing']} missing, {sp['orphans']} orphans, "
                       f"{sp['images_pending']} images not embedded yet" + (f"; {fixed_sp}" if fixed_sp else ""))
        for line in r.space_problems:
            typer.echo(f"space problem: {line}", err=True)
        for line in r.not_repaired:
            typer.echo(f"not repaired: {line}", err=True)
        if r.problems and not repair:
            typer.echo("run `samsearch doctor --repair` to fix what can be fixed")
    if not report.healthy_after_repair:
        raise typer.Exit(EXIT_PARTIAL)
