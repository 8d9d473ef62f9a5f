"""`bemq`: the command line. Every command is a thin layer over `Client` (or starts a process).

Errors print one readable line and exit non-zero; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from producers.cli_ops import COMMANDS, client_for
from producers.cli_tenants import tenants
from producers.client import Client, InvalidBatch


class _Cli(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except InvalidBatch as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {type(exc).__name__}: {exc}".splitlines()[0], err=True)
            sys.exit(1)


@click.group(cls=_Cli)
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.option("--tenant", default=None, help="tenant (default: BEMQ_TENANT)")
@click.pass_context
def cli(ctx: click.Context, debug: bool, tenant: str | None) -> None:
    """bemq: batch and online embedding jobs on GPU workers."""
    ctx.obj = {"debug": debug, "tenant": tenant}


@cli.command()
@click.option("--queues", default="gpu,online", show_default=True,
              help="gpu (batch jobs), online (/v1/embeddings), ops (scheduled tasks)")
@click.option("--devices", default="auto", show_default=True,
              help="CUDA device indexes (one process each), or auto")
@click.option("--concurrency", default=1, show_default=True, help="threads for the ops queue")
@click.option("--beat", is_flag=True, help="also run celery beat in this process (one host only)")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, devices: str, concurrency: int, beat: bool, loglevel: str) -> None:
    """Run a worker: GPU queue (one process per device) or ops queue."""
    argv = [sys.executable, "-m", "workers", "--queues", queues, "--devices", devices,
            "--concurrency", str(concurrency), "--loglevel", loglevel]
    if beat:
        argv.append("--beat")
    os.execv(sys.executable, argv)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--metadata", "-m", multiple=True, help="KEY=VALUE, repeatable")
@click.option("--completion-window", default="24h", show_default=True)
@click.option("--expires-after", type=click.IntRange(min=1), default=None,
              help="seconds the uploaded input file lives (default: BEMQ_RETAIN_INPUT_FILES)")
@click.option("--output-expires-after", type=click.IntRange(min=1), default=None,
              help="seconds the output and error files live once written "
                   "(default: BEMQ_RETAIN_OUTPUT_FILES)")
@click.option("--priority", type=click.IntRange(-100, 100), default=None,
              help="order among this tenant's own jobs, higher first (default 0; "
                   "sets metadata priority)")
@click.option("--truncate", is_flag=True,
              help="cut inputs over the model's max_seq_length instead of refusing them, on "
                   "every line that does not set body.truncate itself")
@click.option("--wait", "wait_", is_flag=True, help="wait with a progress bar")
@click.pass_context
def submit(ctx: click.Context, path: str, metadata: tuple[str, ...], completion_window: str,
           expires_after: int | None, output_expires_after: int | None,
           priority: int | None, truncate: bool, wait_: bool) -> None:
    """Submit a JSONL batch file (OpenAI batch line format); prints the job id."""
    meta = {}
    for pair in metadata:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--metadata")
        meta[key] = value
    with client_for(ctx) as client:
        job = client.submit_job(path, metadata=meta or None, completion_window=completion_window,
                                expires_after=expires_after,
                                output_expires_after=output_expires_after, priority=priority,
                                truncate=truncate)
        click.echo(job.id)
        if wait_:
            _wait(client, job.id, None)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="print the batch object as JSON")
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's status, counts, files and errors."""
    from producers.progress import job_table

    with client_for(ctx) as client:
        job = client.status(job_id)
    if as_json:
        click.echo(job.model_dump_json(indent=2))
    else:
        from rich.console import Console

        Console().print(job_table(job))


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="seconds; exit 1 if not done")
@click.pass_context
def wait(ctx: click.Context, job_id: str, timeout: float | None) -> None:
    """Wait for a job with a progress bar; exit 0 only if it completed."""
    with client_for(ctx) as client:
        _wait(client, job_id, timeout)


def _wait(client: Client, job_id: str, timeout: float | None) -> None:
    from producers.progress import wait_with_progress

    client.status(job_id)  # an unknown id fails before any progress bar is drawn
    job = wait_with_progress(client, job_id, timeout)
    counts = job.request_counts
    click.echo(f"{job.id} {job.status.value}: {counts.completed} completed, "
               f"{counts.failed} failed of {counts.total}")
    if job.status.value != "completed":
        sys.exit(1)


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-",
              show_default=True, help="where to write the JSONL")
@click.option("--errors", is_flag=True, help="write the error file instead")
@click.pass_context
def results(ctx: click.Context, job_id: str, output: str, errors: bool) -> None:
    """Write a finished job's output (or error) lines as JSONL."""
    with client_for(ctx) as client:
        lines = client.errors(job_id) if errors else client.results(job_id)
        count = 0
        with click.open_file(output, "w") as fh:
            for line in lines:
                fh.write(json.dumps(line) + "\n")
                count += 1
    if output != "-":
        click.echo(f"wrote {count} lines to {output}", err=True)


@cli.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: pending micro-batches are skipped, finished lines are kept."""
    with client_for(ctx) as client:
        job = client.cancel(job_id)
    click.echo(f"{job.id} {job.status.value}")


@cli.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--after", default=None, help="job id to page after")
@click.option("--all-tenants", is_flag=True, help="every tenant's jobs, with tenant and priority")
@click.pass_context
def jobs(ctx: click.Context, limit: int, after: str | None, all_tenants: bool) -> None:
    """List recent jobs, newest first."""
    from rich.console import Console

    from producers.progress import jobs_table

    with client_for(ctx) as client:
        found = client.list(limit=limit, after=after, all_tenants=all_tenants)
    Console().print(jobs_table(found, tenants=all_tenants))


@cli.group()
def adapters() -> None:
    """Register and list BEM adapters."""


@adapters.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def adapters_add(ctx: click.Context, name: str, path: str) -> None:
    """Validate an adapter file and store it as version NAME (use model "MODEL:NAME")."""
    with client_for(ctx) as client:
        record = client.add_adapter(name, path)
    click.echo(f"{record.model}:{record.name} sha256={record.sha256[:16]} "
               f"E={record.experts} r={record.rank} {record.bytes} bytes")


@adapters.command("list")
@click.pass_context
def adapters_list(ctx: click.Context) -> None:
    """List registered adapters."""
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "experts", "rank", "bytes", "sha256")
    table.add_column("name", no_wrap=True)
    with client_for(ctx) as client:
        for a in client.adapters():
            table.add_row(a.model, str(a.experts), str(a.rank), str(a.bytes), a.sha256[:16],
                          a.name)
    Console().print(table)


@cli.command()
@click.option("--items", default=2400, show_default=True, help="sentences to embed")
@click.option("--home", default="var/demo", show_default=True, help="embedded state directory")
def demo(items: int, home: str) -> None:
    """Run a real batch job end to end on the embedded default (no servers)."""
    from producers.demo import run_demo

    sys.exit(run_demo(items=items, home=home))


for _command in (*COMMANDS, tenants):
    cli.add_command(_command)


def main() -> None:
    # Connection-pool retries log each failed attempt; the CLI reports the outcome once.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    # The filesystem:// broker URL has no host by design; kombu warns about it on every use.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    cli(prog_name="bemq")


if __name__ == "__main__":
    main()
