"""The command line beyond the roles: ``tenants list``, ``keys list|revoke`` on the
database, ``recipients import`` and ``send`` through a running API (real server, real
store), and the settings ``--help`` documents."""

from __future__ import annotations

import asyncio
import re
import typing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from clarion import cli, cli_client
from clarion.api import schemas
from clarion.config import Settings
from clarion.domain.chat import ADDRESS_FIELDS
from clarion.observability import logs
from harness import Harness
from inbox_kit import serving

TEMPLATE = {"channels": {"email": {"subject": "Hi {{ n }}", "text": "{{ n }}"}}}


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command configures the process's logging; these tests run it in the test's own
    process, whose logging stays as pytest set it."""
    monkeypatch.setattr(logs, "configure_logging", lambda *args, **kwargs: None)


def test_help_documents_real_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    named = set(re.findall(r"CLARION_([A-Z_]+)", out)) - {"API_URL", "API_KEY"}
    assert {"DATABASE_URL", "BROKER_URL", "SECRET_KEY", "HTTP_PORT"} <= named
    assert {name.lower() for name in named} <= set(Settings.model_fields)
    for command in ("recipients", "send", "apply", "tenants", "keys"):
        assert command in out


async def _cli(monkeypatch: pytest.MonkeyPatch, app: Harness, *argv: str) -> int:
    monkeypatch.setenv("CLARION_DATABASE_URL", app.settings.database_url)
    code: int = await asyncio.to_thread(cli.main, list(argv))
    return code


async def test_tenants_and_keys_are_listed_and_keys_revoked(
    lite: Harness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    other = await lite.new_tenant("zeta")
    assert await _cli(monkeypatch, lite, "tenants", "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "ID", "CREATED", "KEYS"]
    assert [line.split()[0] for line in out[1:]] == ["acme", "zeta"]
    assert out[1].split()[1] == lite.tenant_id

    assert await _cli(monkeypatch, lite, "keys", "list", "zeta") == 0
    [header, row] = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "PREFIX", "SCOPES", "CREATED", "REVOKED", "NAME"]
    key_id = row.split()[0]
    assert other not in row
    assert row.split()[-2:] == ["-", "-"]  # not revoked, no name

    # The key works until it is revoked; then it is a 401 (it was never cached).
    assert await _cli(monkeypatch, lite, "keys", "revoke", "acme", key_id) == 1
    assert "has no key" in capsys.readouterr().err
    assert await _cli(monkeypatch, lite, "keys", "revoke", "zeta", key_id) == 0
    assert capsys.readouterr().out.strip() == f"key {key_id} revoked"
    response = await lite.client.get("/v1/templates", headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 401
    assert await _cli(monkeypatch, lite, "keys", "revoke", "zeta", key_id) == 0
    assert "already" in capsys.readouterr().out
    assert await _cli(monkeypatch, lite, "keys", "list", "zeta") == 0
    assert re.search(r"\d{4}-\d\d-\d\dT\S+Z  -$", capsys.readouterr().out.splitlines()[1])
    assert await _cli(monkeypatch, lite, "keys", "list", "nobody") == 1
    # A named key: the name ends its line.
    assert await _cli(monkeypatch, lite, "keys", "create", "zeta", "--name", "billing job") == 0
    assert capsys.readouterr().out.startswith("ck_")
    assert await _cli(monkeypatch, lite, "keys", "list", "zeta") == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("  billing job")
    with pytest.raises(SystemExit):
        await _cli(monkeypatch, lite, "keys", "create", "zeta", "--name", "x" * 101)


async def _recipient(app: Harness, rid: str) -> dict[str, Any] | None:
    response = await app.client.get(f"/v1/recipients/{rid}", headers=app.auth)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_recipients_import_from_csv_and_jsonl(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "people.csv"
    table.write_text(
        "id,email,locale,data.firstName,data.plan\n"
        "u-1,one@example.com,fr-CA,Zoé,pro\n"
        "u-2,not-an-email,,,\n"
        'u-3,three@example.com,,"<script>x</script>",\n',
        encoding="utf-8",
    )
    lines = tmp_path / "many.jsonl"
    lines.write_bytes(
        b"\n".join(orjson.dumps({"id": f"m-{n}", "phone": "+14155550100"}) for n in range(1500))
    )
    async with serving(lite) as base:
        argv = ["--url", base, "--key", lite.key]
        code = await asyncio.to_thread(cli.main, ["recipients", "import", str(table), *argv])
        assert code == 1
        err = capsys.readouterr().err
        assert "item 2:" in err
        assert "2 recipient(s) stored, 1 refused" in err
        one = await _recipient(lite, "u-1")
        assert one is not None
        assert (one["email"], one["locale"], one["data"]) == (
            "one@example.com",
            "fr-CA",
            {"firstName": "Zoé", "plan": "pro"},
        )
        assert await _recipient(lite, "u-2") is None
        three = await _recipient(lite, "u-3")
        assert three is not None
        assert three["data"] == {"firstName": "<script>x</script>"}
        code = await asyncio.to_thread(cli.main, ["recipients", "import", str(lines), *argv])
        assert code == 0
        assert "1500 recipient(s) stored, 0 refused" in capsys.readouterr().err
        assert await _recipient(lite, "m-1499") is not None


CHAT_CSV = (
    "id,whatsapp,chat.slack.channel,chat.telegram.chat_id,chat.discord.webhook_url,"
    "chat.mattermost.webhook_url,chat.mattermost.channel\n"
    "w-1,+447700900123,C0123456789,-1001234567,https://discord.com/api/webhooks/1/a,"
    "https://mm.example.com/hooks/x,town-square\n"
    "w-2,,,@news_channel,,,\n"
    "w-3,,,,,,\n"
    # A kind's cells are one address: a Mattermost channel without its webhook is refused.
    "w-4,+14155550100,,,,,town-square\n"
)


async def test_recipients_import_whatsapp_and_chat_columns(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "chat.csv"
    table.write_text(CHAT_CSV, encoding="utf-8")
    items = cli_client.read_recipients(table)
    # Empty cells are left out: no empty `whatsapp`, no address without cells.
    assert items[1] == {"id": "w-2", "chat": [{"kind": "telegram", "chat_id": "@news_channel"}]}
    assert items[2] == {"id": "w-3"}
    async with serving(lite) as base:
        argv = ["recipients", "import", str(table), "--url", base, "--key", lite.key]
        assert await asyncio.to_thread(cli.main, argv) == 1
        err = capsys.readouterr().err
        assert re.search(r"item 4: .*chat\.0\.mattermost\.webhook_url", err), err
        assert "3 recipient(s) stored, 1 refused" in err
        one = await _recipient(lite, "w-1")
        assert one is not None
        assert one["whatsapp"] == "+447700900123"
        # Several kinds in one row, in the header's order.
        assert one["chat"] == [
            {"kind": "slack", "channel": "C0123456789"},
            {"kind": "telegram", "chat_id": "-1001234567"},
            {"kind": "discord", "webhook_url": "https://discord.com/api/webhooks/1/a"},
            {
                "kind": "mattermost",
                "webhook_url": "https://mm.example.com/hooks/x",
                "channel": "town-square",
            },
        ]
        two = await _recipient(lite, "w-2")
        assert two is not None
        assert (two["whatsapp"], two["chat"]) == (
            None,
            [{"kind": "telegram", "chat_id": "@news_channel"}],
        )
        three = await _recipient(lite, "w-3")
        assert three is not None
        assert (three["whatsapp"], three["chat"]) == (None, [])
        assert await _recipient(lite, "w-4") is None
        # Again: the same file stores the same recipients, nothing twice.
        assert await asyncio.to_thread(cli.main, argv) == 1
        assert "3 recipient(s) stored, 1 refused" in capsys.readouterr().err
        assert await _recipient(lite, "w-1") == one


async def test_the_documented_csv_imports(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/operations.md's example file, taken from the page itself."""
    page = (Path(__file__).parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    [example] = re.findall(r"```csv\n(.*?)```", page, re.DOTALL)
    table = tmp_path / "users.csv"
    table.write_text(example, encoding="utf-8")
    async with serving(lite) as base:
        argv = ["recipients", "import", str(table), "--url", base, "--key", lite.key]
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert "2 recipient(s) stored, 0 refused" in capsys.readouterr().err
    one = await _recipient(lite, "u-1")
    assert one is not None
    assert [address["kind"] for address in one["chat"]] == ["slack", "telegram"]


async def test_hostile_chat_and_whatsapp_cells_are_refused_row_by_row(
    strict: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "hostile.csv"
    table.write_text(
        "id,whatsapp,chat.slack.channel,chat.slack.webhook_url,chat.discord.webhook_url,"
        "chat.telegram.chat_id\n"
        "h-1,,,,http://discord.com/api/webhooks/1/a,\n"
        "h-2,,C0123456789,https://hooks.slack.com/services/T/B/x,,\n"
        "h-3,not-a-number,,,,\n"
        'h-4,,"C1 <script>",,,\n'
        "h-5,,,,javascript:alert(1),\n"
        "h-6,,,,,@x\n"
        "h-7,+14155550100,,,https://discord.com/api/webhooks/1/a,4242001\n",
        encoding="utf-8",
    )
    async with serving(strict) as base:
        argv = ["recipients", "import", str(table), "--url", base, "--key", strict.key]
        assert await asyncio.to_thread(cli.main, argv) == 1
        err = capsys.readouterr().err
        assert (
            "item 1: the recipient is not valid (chat.0.webhook_url: a webhook URL must be https)"
            in err
        )
        for n, field in (
            (2, "chat.0.slack"),
            (3, "whatsapp"),
            (4, "chat.0.slack.channel"),
            (5, "chat.0.discord.webhook_url"),
            (6, "chat.0.telegram.chat_id"),
        ):
            assert re.search(rf"item {n}: .*\({re.escape(field)}", err), (n, err)
        assert "item 7" not in err
        assert "1 recipient(s) stored, 6 refused" in err
        for n in range(1, 7):
            assert await _recipient(strict, f"h-{n}") is None
        kept = await _recipient(strict, "h-7")
        assert kept is not None
        assert kept["chat"] == [
            {"kind": "discord", "webhook_url": "https://discord.com/api/webhooks/1/a"},
            {"kind": "telegram", "chat_id": "4242001"},
        ]


def test_the_chat_columns_are_the_api_s_address_fields() -> None:
    union = typing.get_args(typing.get_args(schemas.ChatAddress)[0])
    fields = {
        model.model_fields["kind"].annotation.__args__[0]: set(model.model_fields) - {"kind"}
        for model in union
    }
    assert fields == {kind: set(names) for kind, names in ADDRESS_FIELDS.items()}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.csv", "id,shoe\nu,1\n", "unknown column 'shoe'"),
        # A header is checked as a whole, whatever the rows hold.
        ("bad.csv", "id,shoe\nu,\n", "line 1: unknown column 'shoe'"),
        ("bad.csv", "id,email,email\nu,a@example.com,b@example.com\n", "'email' is named twice"),
        ("bad.csv", "id,chat.slack\nu,C1\n", "line 1: column 'chat.slack' is not chat.<kind>."),
        ("bad.csv", "id,chat..x\nu,C1\n", "line 1: column 'chat..x' is not chat.<kind>."),
        ("bad.csv", "id,chat.slack.\nu,C1\n", "column 'chat.slack.' is not chat.<kind>."),
        ("bad.csv", "id,chat.slack.channel.x\nu,C1\n", "'chat.slack.channel.x' is not chat."),
        ("bad.csv", "id,chat\nu,C1\n", "column 'chat' is not chat.<kind>.<field>"),
        (
            "bad.csv",
            "id,chat.pigeon.channel\nu,\n",
            "line 1: column 'chat.pigeon.channel': unknown chat kind 'pigeon'",
        ),
        ("bad.csv", "id,chat.Slack.channel\nu,C1\n", "unknown chat kind 'Slack'"),
        ("bad.csv", "id,chat.telegram.channel\nu,1\n", "a telegram address has no 'channel'"),
        ("bad.csv", "id,chat.slack.kind\nu,teams\n", "a slack address has no 'kind'"),
        ("bad.csv", "id,whatsapp\nu,+14155550100,x\n", "line 2: more cells than columns"),
        ("bad.csv", "email\na@example.com\n", "`id` column"),
        ("bad.jsonl", '{"id": "a"}\n[1]\n', "line 2: not a JSON object"),
        ("bad.jsonl", "{nope\n", "line 1: not JSON"),
        ("bad.txt", "u-1\n", "expected a .csv or .jsonl"),
    ],
)
def test_unreadable_imports_are_refused_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    # Port 9 (discard) is never called: the file is refused first.
    argv = ["recipients", "import", str(path), "--url", "http://127.0.0.1:9", "--key", "k"]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_key_is_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLARION_API_KEY", raising=False)
    assert cli.main(["send", "--template", "t", "--to", "u"]) == 2
    assert "CLARION_API_KEY" in capsys.readouterr().err


async def test_send_in_bulk_once(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await lite.put_template("bulk", TEMPLATE)
    everyone = [{"id": f"r-{n}", "email": f"r{n}@example.com"} for n in range(1200)]
    everyone += [{"id": rid, "email": f"{rid}@example.com"} for rid in ("a", "b")]
    for start in (0, 1000):
        stored = await lite.client.post(
            "/v1/recipients/batch",
            json={"recipients": everyone[start : start + 1000]},
            headers=lite.auth,
        )
        assert stored.status_code == 200, stored.text
    ids = tmp_path / "ids.txt"
    ids.write_text("# everyone\n" + "\n".join(f"r-{n}" for n in range(1200)) + "\n\n")
    async with serving(lite) as base:
        argv = ["send", "--template", "bulk", "--data", '{"n": 7}', "--url", base]
        argv += ["--key", lite.key, "--to-file", str(ids)]
        assert await asyncio.to_thread(cli.main, argv) == 0
        captured = capsys.readouterr()
        first = captured.out.split()
        assert len(first) == 2
        assert all(nid.startswith("ntf_") for nid in first)
        assert "1200 recipient(s) accepted, 0 refused" in captured.err
        # Again: the same notifications, nothing sent twice.
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert capsys.readouterr().out.split() == first
        sizes = []
        for nid in first:
            notification = await lite.notification(nid)
            assert notification["template"] == "bulk"
            sizes.append(len(notification["to"]["recipient_ids"]))
        assert sizes == [1000, 200]

        few = ["send", "--template", "bulk", "--to", "a", "--to", "b", "--data", '{"n": 1}']
        few += ["--channels", "email", "--priority", "high", "--url", base, "--key", lite.key]
        assert await asyncio.to_thread(cli.main, few) == 0
        [nid] = capsys.readouterr().out.split()
        notification = await lite.notification(nid)
        assert notification["to"]["recipient_ids"] == ["a", "b"]
        assert (notification["priority"], notification["channels"]) == ("high", ["email"])

        unknown = ["send", "--template", "nope", "--to", "a", "--url", base, "--key", lite.key]
        assert await asyncio.to_thread(cli.main, unknown) == 1
        assert "unknown_template" in capsys.readouterr().err


def test_bad_send_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["send", "--template", "t", "--to", "u", "--data", "[1]"],
        ["send", "--template", "t", "--to", "u", "--data", "{"],
        ["send", "--template", "t", "--to", "u", "--channels", "pigeon"],
        ["send", "--template", "t"],
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main([*argv, "--key", "k"])
        assert exited.value.code == 2, argv
    capsys.readouterr()


def test_429_and_503_are_tried_again_after_retry_after() -> None:
    answers = iter([(429, "0"), (503, "0"), (202, None)])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["idempotency-key"])
        status, after = next(answers)
        headers = {"Retry-After": after} if after else {}
        return httpx.Response(status, json={"id": "ntf_1"}, headers=headers)

    client = httpx.Client(base_url="http://clarion", transport=httpx.MockTransport(handler))
    api = cli_client.Api("http://clarion", "k", client=client)
    response = api.post("/v1/notifications", {}, "key-1")
    assert response.status_code == 202
    assert seen == ["key-1", "key-1", "key-1"]


def test_batches_stay_under_the_item_and_size_limits() -> None:
    small = [{"id": str(n)} for n in range(2500)]
    assert [len(b) for b in cli_client.batches(small)] == [1000, 1000, 500]
    big = [{"id": str(n), "data": {"blob": "x" * 10_000}} for n in range(100)]
    runs = list(cli_client.batches(big))
    assert sum(len(b) for b in runs) == 100
    assert all(len(orjson.dumps(b)) < 512 * 1024 for b in runs)
    assert len(runs) > 1
