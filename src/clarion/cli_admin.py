"""The ``clarion`` commands that work on the database directly: ``migrate``, ``tenants``,
``keys`` and ``archive``."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from clarion.config import Settings, parse_duration
from clarion.domain.models import ALL_SCOPES
from clarion.pipeline.context import Context, open_context
from clarion.store import audit, inbox_access, retention
from clarion.store import providers as provider_store
from clarion.store import tenants as tenant_store
from clarion.store import webhooks as webhook_store
from clarion.store.db import migrate, utcnow


async def rotate_secret(ctx: Context) -> int:
    """Re-encrypt provider credentials and webhook secrets with the current key; prints how
    many changed."""
    if ctx.keyring.current is None:
        print("CLARION_SECRET_KEY is not set: nothing to re-encrypt with", file=sys.stderr)
        return 1
    outcome = await provider_store.rotate(ctx.engine, ctx.keyring, actor=audit.CLI)
    print(f"re-encrypted {outcome.changed} provider(s) with key {ctx.keyring.current_id}")
    hooks = await webhook_store.rotate(ctx.engine, ctx.keyring, actor=audit.CLI)
    print(f"re-encrypted {hooks.changed} webhook secret(s) with key {ctx.keyring.current_id}")
    unreadable = [("provider", *u) for u in outcome.unreadable]
    unreadable += [("webhook", *u) for u in hooks.unreadable]
    for what, tenant_id, name in unreadable:
        print(
            f"{what} {name!r} of tenant {tenant_id}: cannot be decrypted with the "
            "current or previous keys; left as it is",
            file=sys.stderr,
        )
    return 1 if unreadable else 0


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else "-"


async def _list_tenants(ctx: Context) -> int:
    rows = await tenant_store.list_tenants(ctx.engine)
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'NAME':<{width}}  {'ID':<32}  {'CREATED':<20}  KEYS")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['id']:<32}  {_when(r['created_at']):<20}  {r['keys']}")
    return 0


async def _keys(args: argparse.Namespace, ctx: Context, tenant: tenant_store.Tenant) -> int:
    if args.action == "revoke":
        outcome = await tenant_store.revoke_key(ctx.engine, tenant.id, args.key_id, actor=audit.CLI)
        if outcome == "unknown":
            print(f"tenant {tenant.name} has no key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"key {args.key_id} {'revoked' if outcome == 'revoked' else 'was revoked already'}")
        return 0
    print(f"{'ID':<32}  {'PREFIX':<12}  {'SCOPES':<24}  {'CREATED':<20}  {'REVOKED':<20}  NAME")
    for k in await tenant_store.list_keys(ctx.engine, tenant.id):
        scopes = ",".join(k["scopes"])
        print(
            f"{k['id']:<32}  {k['prefix']:<12}  {scopes:<24}  {_when(k['created_at']):<20}  "
            f"{_when(k['revoked_at']):<20}  {k['name'] or '-'}"
        )
    return 0


async def _tenants(args: argparse.Namespace, ctx: Context) -> int:
    if args.action == "list":
        return await _list_tenants(ctx)
    found = await tenant_store.get_tenant_by_name(ctx.engine, args.name)
    if args.action == "quota":
        if found is None:
            print(f"no tenant named {args.name!r}", file=sys.stderr)
            return 1
        for value in (args.rate, args.burst):
            if value is not None and value <= 0:
                print("--rate and --burst must be positive", file=sys.stderr)
                return 2
        changes = {"intake_rate_per_second": args.rate, "intake_burst": args.burst}
        await tenant_store.update_settings(ctx.engine, found.id, changes, actor=audit.CLI)
        print(
            f"tenant {found.name}: rate {args.rate or 'default'}/s, burst {args.burst or 'default'}"
        )
        return 0
    if found is not None:
        print(f"a tenant named {args.name!r} exists already", file=sys.stderr)
        return 1
    tenant = await tenant_store.create_tenant(ctx.engine, args.name, actor=audit.CLI)
    key = await tenant_store.create_key(
        ctx.engine, tenant.id, [s.value for s in ALL_SCOPES], actor=audit.CLI
    )
    print(f"tenant {tenant.name} ({tenant.id})")
    print(f"webhook signing secret: {tenant.webhook_secret}")
    print(key)
    return 0


async def _archive(args: argparse.Namespace, ctx: Context) -> int:
    try:
        age = parse_duration(args.before)
    except ValueError:
        print(f"--before: not an age: {args.before!r} (e.g. 14d, 36h)", file=sys.stderr)
        return 2
    if age <= 0:
        print("--before must be a positive age", file=sys.stderr)
        return 2
    if args.to is None and not args.dry_run:
        print("--to DIR is required (or --dry-run)", file=sys.stderr)
        return 2
    now = utcnow()
    cutoff = now - timedelta(seconds=age)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    done = await retention.archive(
        ctx.engine, cutoff, args.to or Path("."), stamp, dry_run=args.dry_run
    )
    verb = "would export" if args.dry_run else "exported"
    for name, rows in done.files:
        print(f"{verb} {rows} rows: {name}")
    for name in done.dropped:
        print(f"dropped partition {name}")
    print(f"cutoff {cutoff.isoformat()}: {sum(r for _n, r in done.files)} rows")
    return 0


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the database commands (`migrate`, `tenants`, `keys`, `archive`) after
    bringing the schema up to date; returns the exit code."""
    ctx = await open_context(settings)
    try:
        await migrate(ctx.engine)
        if args.command == "migrate":
            print("database schema is up to date")
            return 0
        if args.command == "tenants":
            return await _tenants(args, ctx)
        if args.command == "archive":
            return await _archive(args, ctx)
        if args.action == "rotate-secret":
            return await rotate_secret(ctx)
        found = await tenant_store.get_tenant_by_name(ctx.engine, args.tenant)
        if found is None:
            print(f"no tenant named {args.tenant!r}", file=sys.stderr)
            return 1
        if args.action == "rotate-inbox-secret":
            await inbox_access.rotate(ctx.engine, found.id, actor=audit.CLI)
            print(f"tenant {found.name}: inbox secret replaced, earlier recipient tokens revoked")
            return 0
        if args.action in ("list", "revoke"):
            return await _keys(args, ctx, found)
        secret = await tenant_store.create_key(
            ctx.engine, found.id, args.scopes, name=args.name, actor=audit.CLI
        )
        print(secret)
        return 0
    finally:
        await ctx.aclose()
