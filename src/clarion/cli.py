"""The ``clarion`` command."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from clarion import __version__, cli_bulk
from clarion.config import Settings, parse_duration
from clarion.domain.models import ALL_SCOPES, Channel
from clarion.observability.logs import configure_logging
from clarion.pipeline.context import Context, open_context
from clarion.pipeline.runtime import ALL_CHANNELS, Roles
from clarion.store import audit, inbox_access, retention
from clarion.store import providers as provider_store
from clarion.store import tenants as tenant_store
from clarion.store import webhooks as webhook_store
from clarion.store.db import migrate, utcnow


def _channels(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    valid = {c.value for c in Channel}
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown channel(s) {unknown}; choose from {sorted(valid)}"
        )
    return names


def _scopes(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    valid = {s.value for s in ALL_SCOPES}
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scopes must be some of {sorted(valid)}")
    return names


def _key_name(text: str) -> str:
    name = text.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise argparse.ArgumentTypeError("a name is 1 to 100 printable characters")
    return name


SETTINGS_HELP = """\
settings (environment; every one is in docs/operations.md):
  CLARION_DATABASE_URL   sqlite+aiosqlite:///./clarion.db (default) or
                         postgresql+asyncpg://user@host/db
  CLARION_BROKER_URL     embedded:// (default, one process) or redis://host:6379/0
  CLARION_REDIS_URL      Redis for rate limits, breakers and live inbox fan-out
  CLARION_SECRET_KEY     seals provider credentials (`clarion secret generate`)
  CLARION_HTTP_HOST      the API's address (127.0.0.1)
  CLARION_HTTP_PORT      the API's port (8080)
  CLARION_DEFAULT_PROVIDER  where channels without a provider go (sandbox)
  CLARION_METRICS_PORT   /metrics, /healthz and /readyz on their own port
  CLARION_LOG_LEVEL      INFO; CLARION_LOG_FORMAT: text or json
  CLARION_API_URL, CLARION_API_KEY  where `recipients import` and `send` connect

The admin console is at /admin and the API reference at /docs on the API's port.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarion",
        description=__doc__,
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clarion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run every role in one process (the embedded default)")
    sub.add_parser("api", help="run the HTTP API")
    worker = sub.add_parser("worker", help="run the planner and channel workers")
    worker.add_argument("--channels", type=_channels, default=list(ALL_CHANNELS))
    worker.add_argument("--no-planner", action="store_true", help="run channel workers only")
    sub.add_parser("scheduler", help="run the outbox relay, the sweeper and recurring schedules")
    sub.add_parser("migrate", help="bring the database schema up to date")
    archive = sub.add_parser(
        "archive",
        help="export deliveries, their events and finished notifications older than a "
        "cutoff to compressed JSON lines, then remove them from the database",
    )
    archive.add_argument(
        "--before", required=True, help="age of the cutoff: 14d, 36h, 90m (days d, hours h, ...)"
    )
    archive.add_argument("--to", type=Path, help="directory for the .jsonl.gz files")
    archive.add_argument(
        "--dry-run", action="store_true", help="only count what would be exported and removed"
    )
    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(
        dest="action", required=True
    )
    create = tenants.add_parser("create", help="create a tenant and print a key with every scope")
    create.add_argument("name")
    tenants.add_parser("list", help="list tenants: name, id, creation, live keys")
    quota = tenants.add_parser(
        "quota", help="set a tenant's intake quota (notifications per second, and burst)"
    )
    quota.add_argument("name")
    quota.add_argument("--rate", type=float, help="per second; omitted: the deployment's")
    quota.add_argument("--burst", type=int, help="at once; omitted: the deployment's")
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    key = keys.add_parser("create", help="create an API key for a tenant")
    key.add_argument("tenant", help="the tenant's name")
    key.add_argument("--scopes", type=_scopes, default=[s.value for s in ALL_SCOPES])
    key.add_argument("--name", type=_key_name, help="what the key is for (up to 100 characters)")
    listed = keys.add_parser("list", help="list a tenant's keys (never their secrets)")
    listed.add_argument("tenant", help="the tenant's name")
    revoke = keys.add_parser(
        "revoke", help="revoke a key: refused everywhere within 30 seconds (auth caches)"
    )
    revoke.add_argument("tenant", help="the tenant's name")
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    keys.add_parser(
        "rotate-secret",
        help="re-encrypt every provider's credentials and webhook secret with CLARION_SECRET_KEY "
        "(after moving the old key to CLARION_PREVIOUS_SECRET_KEYS)",
    )
    inbox_secret = keys.add_parser(
        "rotate-inbox-secret",
        help="replace a tenant's inbox secret: every recipient token issued so far stops working",
    )
    inbox_secret.add_argument("tenant", help="the tenant's name")
    secret = sub.add_parser("secret", help="secrets").add_subparsers(dest="action", required=True)
    secret.add_parser("generate", help="print a new CLARION_SECRET_KEY")
    cli_bulk.add_parsers(sub, _channels)
    return parser


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


async def _admin(args: argparse.Namespace, settings: Settings) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, pii=settings.log_pii)
    if args.command == "secret":
        print(base64.b64encode(os.urandom(32)).decode())
        return 0
    if args.command in ("migrate", "tenants", "keys", "archive"):
        return asyncio.run(_admin(args, settings))
    if args.command in ("recipients", "send"):
        return cli_bulk.run(args)
    from clarion import process

    roles = {
        "serve": Roles.everything(),
        "api": Roles(api=True),
        "scheduler": Roles(scheduler=True),
    }.get(args.command)
    if roles is None:
        roles = Roles(planner=not args.no_planner, channels=args.channels)
    if (
        args.command in ("api", "worker", "scheduler")
        and settings.is_sqlite
        and settings.broker_url.startswith("embedded")
    ):
        print(
            f"`clarion {args.command}` runs one role and needs a shared broker "
            "(CLARION_BROKER_URL=redis://...); with the embedded default use `clarion serve`",
            file=sys.stderr,
        )
        return 2
    if not settings.is_sqlite and not settings.secret_key:
        print(
            f"`clarion {args.command}` on PostgreSQL needs CLARION_SECRET_KEY: it seals tenants' "
            "provider credentials and must be the same in every process. Make one with "
            "`clarion secret generate` and keep it safe.",
            file=sys.stderr,
        )
        return 2
    run_loop(process.run(settings, roles, demo=args.command == "serve"))
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a process on uvloop where it is installed (Linux, macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
