"""The ``clarion`` command.

Only the standard library and Clarion's plain value types are imported here, so that
``--version`` and ``--help`` answer at once; each command imports what it needs when it
runs (the database commands :mod:`clarion.cli_admin`, the roles :mod:`clarion.process`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections.abc import Collection, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clarion import __version__, cli_apply, cli_bulk
from clarion.domain.models import ALL_CHANNELS, ALL_SCOPES, LANES

if TYPE_CHECKING:
    from clarion.config import Settings
    from clarion.pipeline.runtime import Roles


def _names(text: str, valid: Collection[str]) -> tuple[list[str], list[str]]:
    """A comma-separated list's names, and those of them not in ``valid``."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    return names, [n for n in names if n not in valid]


def _channels(text: str) -> list[str]:
    valid = set(ALL_CHANNELS)
    names, unknown = _names(text, valid)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown channel(s) {unknown}; choose from {sorted(valid)}"
        )
    return names


def _lanes(text: str) -> list[str]:
    valid = [str(lane) for lane in LANES]
    names, unknown = _names(text, valid)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown lane(s) {unknown}; choose from {valid}")
    return [lane for lane in valid if lane in names]


def _scopes(text: str) -> list[str]:
    valid = {s.value for s in ALL_SCOPES}
    names, unknown = _names(text, valid)
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
  CLARION_BROKER_URL     embedded:// (default, one process), redis://host:6379/0 or
                         nats://host:4222 (NATS JetStream)
                         redis+cluster://host1:6379,host2:6379 (a Redis Cluster)
  CLARION_REDIS_URL      Redis for rate limits, breakers and live inbox fan-out
                         (the broker's Redis by default; set it with NATS, whose
                         servers carry the live inbox events then)
  CLARION_SECRET_KEY     seals provider credentials (`clarion secret generate`)
  CLARION_HTTP_HOST      the API's address (127.0.0.1)
  CLARION_HTTP_PORT      the API's port (8080)
  CLARION_DEFAULT_PROVIDER  where channels without a provider go (sandbox)
  CLARION_METRICS_PORT   /metrics, /healthz and /readyz on their own port
  CLARION_LOG_LEVEL      INFO; CLARION_LOG_FORMAT: text or json
  CLARION_API_URL, CLARION_API_KEY  where `recipients import`, `send` and `apply`
                         connect

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
    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument(
        "--planner",
        action="store_true",
        help="plan in this process too, beside workers run with --no-planner: less CPU per "
        "notification at a moderate rate on a small machine (docs/operations.md, Scaling)",
    )
    worker = sub.add_parser("worker", help="run the planner and channel workers")
    worker.add_argument("--channels", type=_channels, default=list(ALL_CHANNELS))
    worker.add_argument("--no-planner", action="store_true", help="run channel workers only")
    worker.add_argument(
        "--lanes",
        type=_lanes,
        default=[str(lane) for lane in LANES],
        help="the priority lanes to take (default: all); e.g. critical,high for a worker of "
        "urgent sends beside workers given normal,low (docs/operations.md)",
    )
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
    cli_apply.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from clarion.config import Settings
    from clarion.observability.logs import configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        # Each refused setting by name, with why (never its value: settings hold passwords).
        print(f"clarion: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, pii=settings.log_pii)
    if args.command == "secret":
        print(base64.b64encode(os.urandom(32)).decode())
        return 0
    if args.command in ("migrate", "tenants", "keys", "archive"):
        from clarion import cli_admin

        return asyncio.run(cli_admin.run(args, settings))
    if args.command in ("recipients", "send"):
        return cli_bulk.run(args)
    if args.command == "apply":
        return cli_apply.run(args)
    return _run_roles(args, settings)


def _roles(args: argparse.Namespace) -> Roles:
    from clarion.pipeline.runtime import Roles

    if args.command == "serve":
        return Roles.everything()
    if args.command == "api":
        return Roles(api=True, planner=args.planner)
    if args.command == "scheduler":
        return Roles(scheduler=True)
    return Roles(planner=not args.no_planner, channels=args.channels, lanes=args.lanes)


def _run_roles(args: argparse.Namespace, settings: Settings) -> int:
    if (
        args.command in ("api", "worker", "scheduler")
        and settings.is_sqlite
        and settings.broker_url.startswith("embedded")
    ):
        print(
            f"`clarion {args.command}` runs one role and needs a shared broker "
            "(CLARION_BROKER_URL=redis://... or nats://...); with the embedded default use "
            "`clarion serve`",
            file=sys.stderr,
        )
        return 2
    if (
        args.command in ("api", "worker", "scheduler")
        and settings.broker_url.startswith(("nats://", "tls://"))
        and settings.effective_redis_url is None
    ):
        print(
            f"`clarion {args.command}` with the NATS broker needs CLARION_REDIS_URL: the "
            "processes of a deployment share rate limits, intake quotas and circuit breakers "
            'through Redis (docs/operations.md, "NATS JetStream"); one process alone can '
            "use `clarion serve`",
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
    from clarion import process

    run_loop(process.run(settings, _roles(args), demo=args.command == "serve"))
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
