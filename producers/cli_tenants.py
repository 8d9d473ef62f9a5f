"""`bemq tenants`: the weights that split the workers between tenants, and what each has queued
(an operator's commands: they read and write the configured store directly)."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.table import Table

from producers.cli_ops import client_for


@click.group()
def tenants() -> None:
    """Tenant weights (fair share between tenants) and their queues."""


@tenants.command("set-weight")
@click.argument("tenant")
@click.argument("weight", type=click.FloatRange(min=0, min_open=True))
@click.pass_context
def tenants_set_weight(ctx: click.Context, tenant: str, weight: float) -> None:
    """Give TENANT the share WEIGHT ÷ (sum of the weights of tenants with work waiting);
    a tenant never set has weight 1. Takes effect at the next dispatch."""
    with client_for(ctx) as client:
        client.store.set_tenant_weight(tenant, weight)
    click.echo(f"{tenant}: weight {weight:g}")


@tenants.command("list")
@click.pass_context
def tenants_list(ctx: click.Context) -> None:
    """Every tenant with a weight set or work queued: weight, queued texts, oldest wait."""
    with client_for(ctx) as client:
        queues = client.store.tenant_queues()
    table = Table("tenant", "weight", "queued texts", "oldest queued")
    now = time.time()
    for q in queues:
        age = f"{now - q.oldest_queued_at:.0f} s" if q.oldest_queued_at else "-"
        table.add_row(q.tenant, f"{q.weight:g}", str(q.queued_items), age)
    Console().print(table)
