"""``clarion recipients import`` and ``clarion send``: bulk work as a tenant, through a
running Clarion's HTTP API (``--url``/``CLARION_API_URL``, ``--key``/``CLARION_API_KEY``),
so that every row goes through the same checks, quotas and idempotency as any client's.

Work goes in batches of up to 1,000 (and well under the 512 KiB body limit), each with an
``Idempotency-Key`` made from the file's content and the batch's position: running the same
command again after an interruption does not create anything twice. A 429 or 503 is tried
again after its ``Retry-After``."""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clarion.domain.chat import ADDRESS_FIELDS

MAX_ITEMS = 1000
MAX_BYTES = 400 * 1024
MAX_TRIES = 5
MAX_WAIT = 60.0
FIELDS = ("email", "phone", "whatsapp", "locale", "timezone", "webhook_url")
COLUMNS = f"id, {', '.join(FIELDS)}, data.<name>, chat.<kind>.<field>"


class InputError(Exception):
    """A line of the input file cannot be read; carries its line number."""


@dataclass(slots=True)
class Tally:
    """What a bulk command did: how many items went through, the ids of those that did not."""

    done: int = 0
    failed: list[str] = field(default_factory=list)


def _chat_column(column: str, line: int) -> tuple[str, str]:
    kind, _, name = column.removeprefix("chat.").partition(".")
    if not column.startswith("chat.") or not kind or not name or "." in name:
        raise InputError(
            f"line {line}: column {column!r} is not chat.<kind>.<field> (e.g. chat.slack.channel)"
        )
    if kind not in ADDRESS_FIELDS:
        raise InputError(
            f"line {line}: column {column!r}: unknown chat kind {kind!r} "
            f"({', '.join(ADDRESS_FIELDS)})"
        )
    if name not in ADDRESS_FIELDS[kind]:
        raise InputError(
            f"line {line}: column {column!r}: a {kind} address has no {name!r} "
            f"({', '.join(ADDRESS_FIELDS[kind])})"
        )
    return kind, name


def _columns(names: Sequence[str], line: int) -> dict[str, tuple[str, ...]]:
    """Where each column of a CSV header goes in a recipient: ``(field,)``, ``("data",
    name)`` or ``("chat", kind, field)``. A column that names nothing known, or one named
    twice, is refused before any row is read."""
    columns: dict[str, tuple[str, ...]] = {}
    for column in names:
        if column in columns:
            raise InputError(f"line {line}: column {column!r} is named twice")
        if column == "id" or column in FIELDS:
            columns[column] = (column,)
        elif column.startswith("data."):
            columns[column] = ("data", column[5:])
        elif column == "chat" or column.startswith("chat."):
            columns[column] = ("chat", *_chat_column(column, line))
        else:
            raise InputError(f"line {line}: unknown column {column!r} ({COLUMNS})")
    return columns


def _csv_row(row: dict[str, str], line: int, columns: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    data: dict[str, Any] = {}
    # A row's cells of one kind make one address, in the order of the header.
    chat: dict[str, dict[str, str]] = {}
    for column, value in row.items():
        if column is None:
            raise InputError(f"line {line}: more cells than columns")
        if value is None or value == "":
            continue
        match columns[column]:
            case ("data", name):
                data[name] = value
            case ("chat", kind, name):
                chat.setdefault(kind, {"kind": kind})[name] = value
            case _:
                item[column] = value
    if data:
        item["data"] = data
    if chat:
        item["chat"] = list(chat.values())
    return item


def read_recipients(path: Path) -> list[dict[str, Any]]:
    """The recipients of a ``.csv`` (a header row: ``id``, ``email``, ``phone``,
    ``whatsapp``, ``locale``, ``timezone``, ``webhook_url``, ``data.<name>``,
    ``chat.<kind>.<field>``) or ``.jsonl`` file (one recipient object with its ``id`` per
    line)."""
    text = path.read_text(encoding="utf-8-sig")
    items: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise InputError("line 1: the header must name an `id` column")
        columns = _columns(reader.fieldnames, reader.line_num)
        for row in reader:
            items.append(_csv_row(row, reader.line_num, columns))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"line {number}: not JSON ({exc})") from exc
            if not isinstance(item, dict):
                raise InputError(f"line {number}: not a JSON object")
            items.append(item)
    else:
        raise InputError(f"{path.name}: expected a .csv or .jsonl file")
    return items


def batches(items: Sequence[Any]) -> Iterator[list[Any]]:
    """Consecutive runs of at most ``MAX_ITEMS`` items and about ``MAX_BYTES`` of JSON."""
    batch: list[Any] = []
    size = 0
    for item in items:
        length = len(orjson.dumps(item)) + 1
        if batch and (len(batch) >= MAX_ITEMS or size + length > MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += length
    if batch:
        yield batch


class Api:
    """A running Clarion, as one tenant."""

    def __init__(self, url: str, key: str, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(30.0, connect=10.0),
        )

    def close(self) -> None:
        self._client.close()

    def post(self, path: str, body: Any, idempotency_key: str) -> httpx.Response:
        """POST, tried again on 429 and 503 after their ``Retry-After`` (at most 60 s)."""
        return self.request("POST", path, body, {"Idempotency-Key": idempotency_key})

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str | int] | None = None,
    ) -> httpx.Response:
        """One request (``body`` as JSON unless None), tried again on 429 and 503 after
        their ``Retry-After`` (at most 60 s), at most ``MAX_TRIES`` times."""
        for attempt in range(1, MAX_TRIES + 1):
            response = self._client.request(method, path, json=body, headers=headers, params=params)
            if response.status_code not in (429, 503) or attempt == MAX_TRIES:
                return response
            time.sleep(min(_retry_after(response), MAX_WAIT))
        raise AssertionError("unreachable")


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("retry-after", "1")), 0.0)
    except ValueError:
        return 1.0


def _error(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
    )


def _key(kind: str, digest: str, index: int) -> str:
    return f"clarion-cli:{kind}:{digest[:32]}:{index}"


def import_recipients(api: Api, items: list[dict[str, Any]], console: Console) -> Tally:
    """Upsert ``items`` in batches; each refused item is reported with its position."""
    outcome = Tally()
    digest = hashlib.sha256(orjson.dumps(items)).hexdigest()
    position = 0
    with _progress(console) as progress:
        task = progress.add_task("recipients", total=len(items))
        for index, batch in enumerate(batches(items)):
            response = api.post(
                "/v1/recipients/batch", {"recipients": batch}, _key("recipients", digest, index)
            )
            if response.status_code != 200:
                outcome.failed.extend(
                    f"item {position + n + 1}: {_error(response)}" for n in range(len(batch))
                )
            else:
                for n, result in enumerate(response.json()["results"]):
                    if "error" in result:
                        message = result["error"]["message"]
                        details = "; ".join(
                            f"{d.get('field', '')}: {d.get('message', '')}"
                            for d in result["error"].get("details", [])
                            if isinstance(d, dict)
                        )
                        outcome.failed.append(f"item {position + n + 1}: {message} ({details})")
                    else:
                        outcome.done += 1
            position += len(batch)
            progress.advance(task, len(batch))
    return outcome


@dataclass(frozen=True, slots=True)
class SendSpec:
    template: str
    data: dict[str, Any]
    channels: list[str] | None = None
    priority: str | None = None


def send(api: Api, spec: SendSpec, recipients: list[str], console: Console) -> Tally:
    """One notification per run of up to 1,000 recipients; ``done`` counts the recipients
    whose notification was accepted. Prints each notification's id."""
    outcome = Tally()
    base: dict[str, Any] = {"template": spec.template, "data": spec.data}
    if spec.channels:
        base["channels"] = spec.channels
    if spec.priority:
        base["priority"] = spec.priority
    digest = hashlib.sha256(orjson.dumps([base, recipients])).hexdigest()
    with _progress(console) as progress:
        task = progress.add_task("recipients", total=len(recipients))
        for index in range(0, len(recipients), MAX_ITEMS):
            chunk = recipients[index : index + MAX_ITEMS]
            body = {**base, "to": {"recipient_ids": chunk}}
            response = api.post("/v1/notifications", body, _key("send", digest, index // MAX_ITEMS))
            if response.status_code == 202:
                outcome.done += len(chunk)
                print(response.json()["id"], flush=True)
            else:
                outcome.failed.append(
                    f"recipients {index + 1}-{index + len(chunk)}: {_error(response)}"
                )
            progress.advance(task, len(chunk))
    return outcome


def read_ids(path: Path) -> list[str]:
    """Recipient ids, one per line (blank lines and ``#`` comments skipped), or the ``id``
    column of a ``.csv`` file."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise InputError("line 1: the header must name an `id` column")
        return [row["id"] for row in reader if row.get("id")]
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
