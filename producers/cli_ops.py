"""Operator commands: `bemq canary|drift|backup|restore` run the same `ops` logic the
beat-scheduled tasks run, against the configured store and blobs; `bemq migrate` upgrades the
store's schema; `bemq serve|keys|flower` run and secure the HTTP gateway and Flower."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ops.backup import service as backup
from ops.blobs import Blobs, open_blobs
from ops.canary import controller
from ops.drift import check as drift
from ops.settings import Settings, load_settings, parse_steps
from ops.store import migrations, open_store
from producers.client import Client
from producers.progress import when
from schemas.canary import Canary, CanaryState


def client_for(ctx: click.Context) -> Client:
    """A client for the tenant given by `bemq --tenant` (default BEMQ_TENANT)."""
    return Client.from_env(tenant=(ctx.obj or {}).get("tenant"))


def _blobs() -> tuple[Settings, Blobs, Blobs]:
    """Settings, the data's blob store and the backups' (BEMQ_BACKUP_URL) only: backup
    commands must work while the store is empty or gone (a restore target)."""
    cfg = load_settings()
    return cfg, open_blobs(cfg.blobs_url, endpoint_url=cfg.s3_endpoint_url), \
        backup.open_backups(cfg)


# -- canary ------------------------------------------------------------------------------------
@click.group()
def canary() -> None:
    """Roll a new adapter version out over a live one, gated step by step."""


@canary.command("start")
@click.option("--model", required=True, help="served model, e.g. minilm")
@click.option("--stable", required=True, help="adapter version serving now")
@click.option("--canary", "canary_name", required=True, help="adapter version to roll out")
@click.option("--steps", default=None, help="weights in percent (default BEMQ_CANARY_STEPS)")
@click.option("--min-samples", type=int, default=None,
              help="per arm and step (default BEMQ_CANARY_MIN_SAMPLES)")
@click.pass_context
def canary_start(ctx: click.Context, model: str, stable: str, canary_name: str,
                 steps: str | None, min_samples: int | None) -> None:
    """Roll out CANARY in place of STABLE, step by step, gated by canary.step."""
    with client_for(ctx) as client:
        cfg = client.settings
        try:
            weights = parse_steps(steps or cfg.canary_steps)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--steps") from None
        if min_samples is not None and min_samples < 1:
            raise click.BadParameter("must be at least 1", param_hint="--min-samples")
        c = controller.start(client.store, cfg, model=model, stable=stable,
                             canary=canary_name, steps=weights,
                             min_samples=min_samples or cfg.canary_min_samples)
    click.echo(f"{c.id} running: {c.canary} takes {c.weight:g}% of {c.model}:{c.stable} "
               f"(steps {', '.join(f'{w:g}' for w in c.steps)}; {c.min_samples} samples per arm)")


@canary.command("status")
@click.argument("canary_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the canary and its decisions")
@click.pass_context
def canary_status(ctx: click.Context, canary_id: str | None, as_json: bool) -> None:
    """Every canary, and the decision history of the newest (or CANARY_ID)."""
    with client_for(ctx) as client:
        rows = client.store.canaries()
        shown = (controller.find(client.store, canary_id) if canary_id
                 else (rows[0] if rows else None))
        history = client.store.decisions(shown.id) if shown else []
    if as_json:
        click.echo(json.dumps({"canary": shown.model_dump(mode="json") if shown else None,
                               "decisions": [d.model_dump(mode="json") for d in history]},
                              indent=2))
        return
    console = Console()
    table = Table("stable → canary", "state", "weight %", "step", "started (UTC)", "reason",
                  title="canaries")
    table.add_column("id", no_wrap=True)
    for c in rows:
        weight = f"{c.serving_weight:g}" + (f" (resumes at {c.weight:g})"
                                            if c.state == CanaryState.PAUSED else "")
        table.add_row(f"{c.stable} → {c.canary}", c.state.value, weight,
                      f"{c.step + 1}/{len(c.steps)}", when(c.started_at), c.reason or "", c.id)
    console.print(table)
    if shown is not None:
        console.print(_history(shown, history))


def _history(c: Canary, history: list[Any]) -> Table:
    table = Table("at (UTC)", "step", "weight %", "decision", "reason",
                  title=f"{c.id} decisions")
    for d in history:
        table.add_row(when(d.at), str(d.step + 1), f"{d.weight:g}", d.decision.value, d.reason)
    return table


@canary.command("abort")
@click.argument("canary_id", required=False)
@click.pass_context
def canary_abort(ctx: click.Context, canary_id: str | None) -> None:
    """Stop a rollout: weight 0, every item back on stable."""
    with client_for(ctx) as client:
        c = controller.abort(client.store, canary_id)
    click.echo(f"{c.id} {c.state.value}: weight 0")


@canary.command("promote")
@click.argument("canary_id", required=False)
@click.pass_context
def canary_promote(ctx: click.Context, canary_id: str | None) -> None:
    """Override the gates: the canary serves 100 % now (recorded as a manual decision)."""
    with client_for(ctx) as client:
        c = controller.promote(client.store, canary_id)
    click.echo(f"{c.id} {c.state.value}: {c.canary} serves every {c.model}:{c.stable} item")


@canary.command("resume")
@click.argument("canary_id", required=False)
@click.pass_context
def canary_resume(ctx: click.Context, canary_id: str | None) -> None:
    """Resume a canary paused by severe drift."""
    with client_for(ctx) as client:
        c = controller.resume(client.store, canary_id)
    click.echo(f"{c.id} {c.state.value} at {c.weight:g}%")


# -- drift -------------------------------------------------------------------------------------
@click.group(name="drift")
def drift_group() -> None:
    """Compare recent inputs and outputs with a pinned reference window."""


@drift_group.command("report")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def drift_report(ctx: click.Context, as_json: bool) -> None:
    """Print the latest drift report."""
    with client_for(ctx) as client:
        found = client.store.drift_reports(client.settings.model_name, limit=1)
    if not found:
        raise click.ClickException("no drift report yet (drift.check runs on the ops worker)")
    report = found[0]
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    severity = "SEVERE" if report["severe"] else ("alert" if report["alerts"] else "no drift")
    title = f"{report['id']} at {when(report['at'])} UTC: {report['status']}; {severity}"
    table = Table("component\n(test)", "alert", "ref n", "recent n", title=title)
    table.add_column("numbers", min_width=30, overflow="fold")
    for c in report["components"]:
        table.add_row(f"{c['component']}\n({c['test']})", "YES" if c["alert"] else "no",
                      str(c["n_reference"]), str(c["n_recent"]), _numbers(c["numbers"]))
    Console().print(table)


def _numbers(numbers: dict[str, Any]) -> str:
    """One line per figure; a component's per-PC or per-adapter detail summarised (the whole
    of it is in `--json`)."""
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"{k}={fmt(v)}" for k, v in numbers.items() if not isinstance(v, list | dict)]
    for name, a in numbers.get("adapters", {}).items():
        name = name or "(base)"
        if "ks_statistic" in a:  # embeddings
            lines.append(f"{name}: flagged PCs={a['flagged']} max ks="
                         f"{fmt(max(a['ks_statistic']))} min p (BH)={fmt(min(a['p_adjusted']))}")
        else:  # expert usage
            lines.append(f"{name}: chi2={fmt(a['chi2'])} p={fmt(a['p_value'])} "
                         f"V={fmt(a['cramers_v'])}")
    return "\n".join(lines)


@drift_group.command("baseline")
@click.pass_context
def drift_baseline(ctx: click.Context) -> None:
    """Pin the last window (BEMQ_DRIFT_WINDOW_SECONDS) as the reference."""
    with client_for(ctx) as client:
        pinned = drift.pin_baseline(client.store, client.settings)
    click.echo(f"reference pinned: {pinned} samples")


# -- backup ------------------------------------------------------------------------------------
@click.group(name="backup")
def backup_group() -> None:
    """Back up the store, adapters and configuration to the blob store."""


@backup_group.command("now")
def backup_now() -> None:
    """Write a backup now (what backup.run does hourly)."""
    cfg, blobs, backups = _blobs()
    manifest = backup.run(cfg, blobs, backups)
    rows = sum(t.rows for t in manifest.tables.values())
    click.echo(f"{manifest.id}: {rows} rows in {len(manifest.tables)} tables, "
               f"{len(manifest.objects)} objects, {manifest.bytes} bytes")


@backup_group.command("list")
def backup_list() -> None:
    """Complete backups, newest first, with their last verification."""
    table = Table("created (UTC)", "kind", "rows", "bytes", "verified", title="backups")
    table.add_column("id", no_wrap=True)
    *_, backups = _blobs()
    for m in backup.manifests(backups):
        v = backup.verification(backups, m.id)
        verified = "-" if v is None else ("ok " if v["ok"] else "FAILED ") + when(v["at"])
        table.add_row(when(m.created_at), m.kind, str(sum(t.rows for t in m.tables.values())),
                      str(m.bytes), verified, m.id)
    Console().print(table)


@backup_group.command("verify")
@click.argument("backup_id", required=False)
def backup_verify(backup_id: str | None) -> None:
    """Restore a backup (default: newest) into a scratch store and compare with its manifest."""
    cfg, _, backups = _blobs()
    result = backup.verify(cfg, backups, backup_id)
    click.echo(f"{result['id']} verified: {len(result['tables'])} tables match")


@click.command()
@click.argument("backup_id")
@click.option("--database-url", default=None, help="target store (default BEMQ_DATABASE_URL)")
def restore(backup_id: str, database_url: str | None) -> None:
    """Restore backup BACKUP_ID into an empty store, after checking every sha256."""
    cfg, blobs, backups = _blobs()
    counts = backup.restore(cfg, blobs, backups, backup_id, database_url)
    table = Table("table", "rows", title=f"restored {backup_id}")
    for name, rows in counts.items():
        table.add_row(name, str(rows))
    Console().print(table)


@click.command()
@click.option("--database-url", default=None, help="store to migrate (default: the configured one)")
@click.option("--check", is_flag=True, help="only say whether it is current; exit 1 if not")
def migrate(database_url: str | None, check: bool) -> None:
    """Bring the store's schema to the version this bemq knows (each step once, in its own
    transaction; safe to run from several hosts at once)."""
    cfg = load_settings()
    store = open_store(database_url or cfg.store_url, pool_size=2,
                       retry_seconds=cfg.db_retry_seconds)
    try:
        before = store.schema_version()
        if check:
            migrations.check(before)
            click.echo(f"schema version {before}: current")
            return
        applied = store.migrate()
        after = store.schema_version()
        migrations.check(after)  # a store newer than this bemq is refused, not "current"
        if applied:
            click.echo(f"schema version {before} → {after} "
                       f"(applied {', '.join(map(str, applied))})")
        else:
            click.echo(f"schema version {after}: already current")
    finally:
        store.close()


# -- gateway -----------------------------------------------------------------------------------
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn processes")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="a log line per request (bem_requests_total and "
                   "bem_request_duration_seconds on /metrics count them either way)")
def serve(host: str, port: int, workers: int, access_log: bool) -> None:
    """Run the HTTP gateway (OpenAI Files, Batches and Embeddings APIs)."""
    import uvicorn

    load_settings()  # a bad BEMQ_* value stops here, with its name
    uvicorn.run("producers.http:create_app", factory=True, host=host, port=port,
                workers=workers, log_level="info", access_log=access_log)


@click.group()
def keys() -> None:
    """API keys of the HTTP gateway (one tenant each)."""


@keys.command("create")
@click.option("--tenant", "key_tenant", required=True)
@click.pass_context
def keys_create(ctx: click.Context, key_tenant: str) -> None:
    """Create a key; it is printed once and only its hash is kept."""
    from ops import apikeys

    with client_for(ctx) as client:
        try:
            key_id, key = apikeys.create(client.store, key_tenant)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tenant") from None
    click.echo(f"{key_id} tenant={key_tenant}")
    click.echo(key)


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """Every key's id, tenant and dates (never the key)."""
    table = Table("id", "tenant", "created (UTC)", "revoked (UTC)", title="API keys")
    with client_for(ctx) as client:
        for k in client.store.api_keys():
            table.add_row(k["id"], k["tenant"], when(k["created_at"]), when(k["revoked_at"]))
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke key KEY_ID: its requests get 401 from now on."""
    with client_for(ctx) as client:
        if not client.store.revoke_key(key_id):
            raise click.ClickException(f"no live key {key_id!r}")
    click.echo(f"{key_id} revoked")


@click.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--basic-auth", default=None, help="user:password (required off loopback)")
def flower(address: str, port: int, basic_auth: str | None) -> None:
    """Run Flower on the configured broker (workers send task events: -E is in the config).

    Flower's HTTP API is open without a login only on loopback; elsewhere give --basic-auth."""
    load_settings()
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
            f"--address={address}", f"--port={port}"]
    env = dict(os.environ)
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    elif address in ("127.0.0.1", "localhost", "::1"):
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        raise click.BadParameter("give --basic-auth to serve Flower off loopback",
                                 param_hint="--basic-auth")
    os.execve(sys.executable, argv, env)


COMMANDS = (canary, drift_group, backup_group, restore, migrate, serve, keys, flower)
