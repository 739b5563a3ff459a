"""The ``clarion apply DIR`` command: categories, layouts, templates and workflows kept as files
(``cli_apply_files``), made the server's through its API (``cli_apply_plan``), so that the
same folder can be applied to every environment that has a URL and a key."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clarion import cli_bulk

if TYPE_CHECKING:
    from clarion.cli_apply_plan import Change

DESCRIPTION = """\
Create or update categories, layouts, templates and workflows from the files of DIR, through
the API: DIR/categories/<name>.yaml, DIR/layouts/<name>.yaml, DIR/templates/<name>.yaml and
DIR/workflows/<key>.yaml (or .yml, .json), each holding the body PUT /v1/<folder>/<name>
takes. Every file is checked before anything is sent; then each object is compared with the
server's active version and only what differs is stored, categories first, then layouts,
templates and workflows. Running it again changes nothing. See docs/operations.md."""


def add_parser(sub: Any) -> None:
    """``apply`` on the ``clarion`` command's subparsers."""
    apply = sub.add_parser(
        "apply",
        help="create or update categories, layouts, templates and workflows from a folder of "
        "YAML or JSON files, through the API",
        description=DESCRIPTION,
    )
    apply.add_argument("dir", type=Path, metavar="DIR", help="the folder")
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would change, each change as a diff, and change nothing",
    )
    apply.add_argument(
        "--prune",
        action="store_true",
        help="also delete what the server has and DIR lacks, of the kinds DIR has a folder "
        "for (the API deletes layouts and workflows only: other kinds are reported and kept)",
    )
    cli_bulk.add_connection(apply)


def run(args: argparse.Namespace) -> int:
    """Run ``apply``; returns the exit code: 0 done (or nothing to do), 1 the server refused
    or could not be reached, 2 the folder or the arguments are not usable."""
    # Imported here: the `clarion` command must answer --help without loading them.
    import httpx

    from clarion import cli_apply_files, cli_apply_plan, cli_client

    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.key:
        print("no API key: pass --key or set CLARION_API_KEY", file=sys.stderr)
        return 2
    try:
        folder = cli_apply_files.read_folder(args.dir)
    except cli_apply_files.FolderError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"nothing applied: {len(exc.problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot read {args.dir}: {exc}", file=sys.stderr)
        return 2
    api = cli_client.Api(args.url, args.key)
    changes: list[Change] = []
    done = 0
    try:
        changes = cli_apply_plan.plan(api, folder, args.prune)
        for change in changes:
            print("\n".join(cli_apply_plan.describe(change)), flush=True)
        print(_planned(changes))
        if args.dry_run:
            print("nothing changed (--dry-run)")
            return 0
        for line in cli_apply_plan.apply(api, changes):
            done += 1
            print(line, flush=True)
    except cli_apply_plan.Refused as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return _stopped(done, changes)
    except httpx.HTTPError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return _stopped(done, changes)
    finally:
        api.close()
    print(_applied(changes))
    return 0


def _counts(changes: list[Change]) -> Counter[str]:
    return Counter(change.action for change in changes)


def _planned(changes: list[Change]) -> str:
    counts = _counts(changes)
    parts = [
        f"{counts[action]} {words}"
        for action, words in (
            ("create", "to create"),
            ("update", "to update"),
            ("delete", "to delete"),
            ("unchanged", "unchanged"),
            ("keep", "kept"),
        )
        if counts[action]
    ]
    return "plan: " + (", ".join(parts) if parts else "no objects")


def _applied(changes: list[Change]) -> str:
    counts = _counts(changes)
    if not counts["create"] + counts["update"] + counts["delete"]:
        return f"nothing to change: {counts['unchanged']} unchanged"
    return (
        f"applied: {counts['create']} created, {counts['update']} updated, "
        f"{counts['delete']} deleted, {counts['unchanged']} unchanged"
    )


def _stopped(done: int, changes: list[Change]) -> int:
    counts = _counts(changes)
    todo = counts["create"] + counts["update"] + counts["delete"]
    if done:
        print(f"stopped: {done} of {todo} change(s) made, the rest not tried", file=sys.stderr)
    else:
        print("stopped: nothing changed", file=sys.stderr)
    return 1
