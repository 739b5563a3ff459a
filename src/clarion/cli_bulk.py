"""The ``clarion recipients`` and ``clarion send`` commands: arguments and output around
:mod:`clarion.cli_client`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from clarion.domain.models import Priority

DEFAULT_URL = "http://127.0.0.1:8080"


def _json_object(text: str) -> dict[str, Any]:
    import orjson

    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_connection(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--key``: where a command that works through the API connects."""
    parser.add_argument(
        "--url",
        default=os.environ.get("CLARION_API_URL", DEFAULT_URL),
        help=f"the Clarion API (default: $CLARION_API_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("CLARION_API_KEY"),
        help="the tenant's API key (default: $CLARION_API_KEY)",
    )


def add_parsers(sub: Any, channels: Any) -> None:
    """``recipients import`` and ``send`` on the ``clarion`` command's subparsers."""
    recipients = sub.add_parser(
        "recipients", help="bulk work on a tenant's recipients, through the API"
    ).add_subparsers(dest="action", required=True)
    load = recipients.add_parser(
        "import",
        help="create or replace recipients from a .csv or .jsonl file",
        description="CSV: a header row naming `id` and any of email, phone, whatsapp, "
        "locale, timezone, webhook_url, data.<name>, chat.<kind>.<field> (e.g. "
        "chat.slack.channel, chat.telegram.chat_id: a row's cells of one kind make one chat "
        "address); empty cells are left out. JSONL: one recipient object per line, with its "
        "`id`, as PUT /v1/recipients/{id} takes it. Sent in batches of up to 1,000; running "
        "it again does not create anything twice.",
    )
    load.add_argument("file", type=Path)
    add_connection(load)
    send = sub.add_parser(
        "send",
        help="send a notification to many recipients, through the API",
        description="One notification per 1,000 recipients (their ids are printed); "
        "running the same command again does not send twice.",
    )
    send.add_argument("--template", required=True)
    who = send.add_mutually_exclusive_group(required=True)
    who.add_argument("--to", action="append", metavar="RECIPIENT_ID", help="repeatable")
    who.add_argument(
        "--to-file", type=Path, help="recipient ids, one per line (or a .csv's `id` column)"
    )
    send.add_argument("--data", type=_json_object, default={}, help="a JSON object")
    send.add_argument("--channels", type=channels, help="narrow to these channels (a,b)")
    send.add_argument("--priority", choices=[p.value for p in Priority])
    add_connection(send)


def run(args: argparse.Namespace) -> int:
    """Run ``recipients import`` or ``send``; returns the exit code."""
    # Imported here, not at the top: the `clarion` command builds its parser from this
    # module and must answer --version and --help without loading an HTTP client.
    import httpx
    from rich.console import Console

    from clarion import cli_client

    console = Console(stderr=True)
    # One line per request would drown the progress bar.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.key:
        print("no API key: pass --key or set CLARION_API_KEY", file=sys.stderr)
        return 2
    try:
        if args.command == "recipients":
            items = cli_client.read_recipients(args.file)
        else:
            recipients = args.to or cli_client.read_ids(args.to_file)
    except (OSError, UnicodeDecodeError, cli_client.InputError) as exc:
        print(f"cannot read the input: {exc}", file=sys.stderr)
        return 2
    api = cli_client.Api(args.url, args.key)
    try:
        if args.command == "recipients":
            outcome = cli_client.import_recipients(api, items, console)
            what = "recipient(s) stored"
        else:
            spec = cli_client.SendSpec(args.template, args.data, args.channels, args.priority)
            outcome = cli_client.send(api, spec, recipients, console)
            what = "recipient(s) accepted"
    except httpx.HTTPError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        api.close()
    for failure in outcome.failed:
        print(failure, file=sys.stderr)
    print(f"{outcome.done} {what}, {len(outcome.failed)} refused", file=sys.stderr)
    return 1 if outcome.failed else 0
