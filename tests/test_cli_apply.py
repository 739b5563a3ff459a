"""``clarion apply DIR``: categories, layouts, templates and workflows from files, through a running
API (real server, real store): created, then unchanged on a second run; a dry run's diff
that changes nothing; pruning; a folder refused whole before anything is sent, hostile
files included; the server's refusals reported with the object."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from clarion import cli, cli_apply_files, cli_apply_plan, cli_apply_yaml, cli_client
from clarion.observability import logs
from harness import Harness
from inbox_kit import serving

PROMOS = """\
default_channels: [email, email, inapp]
max_per_hour: 5
digest:
  window: 1h
"""
MARKETING = "max_per_day: 3\n"
WELCOME = """\
# The welcome message, in the inbox and by email.
category: promos
channels:
  email:
    subject: Welcome, {{ name }}
    html: |
      <p>Hello {{ name }},</p>
      <p>Good to see you.</p>
  inapp:
    title: Welcome
    body: Hello {{ name }}
locales:
  fr:
    email:
      subject: Bienvenue, {{ name }}
"""
RECEIPT = '{"channels": {"sms": {"text": "Paid {{ amount }}"}}}'
ONBOARDING = """\
name: Onboarding
category: promos
steps:
  - id: feed
    type: channel
    channel: inapp
    template: welcome
  - id: wait
    type: delay
    duration: 1h
  - id: mail
    type: channel
    channel: email
    template: welcome
    if: not steps.feed.read
"""
FOLDER = {
    "categories/promos.yaml": PROMOS,
    "categories/marketing.yml": MARKETING,
    "templates/welcome.yaml": WELCOME,
    "templates/receipt.json": RECEIPT,
    "workflows/onboarding.yaml": ONBOARDING,
    "README.md": "Kept in git; applied by CI.\n",
    "workflows/.gitkeep": "",
}


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command configures the process's logging; these tests run it in the test's own
    process, whose logging stays as pytest set it."""
    monkeypatch.setattr(logs, "configure_logging", lambda *args, **kwargs: None)


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


class Runner:
    """``clarion apply`` against one harness's API on a real socket."""

    def __init__(self, app: Harness, base: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.app, self.base, self.capsys = app, base, capsys

    async def __call__(self, root: Path, *flags: str, key: str | None = None) -> tuple[int, str]:
        """The exit code, and what was printed (standard output, then standard error)."""
        argv = ["apply", str(root), *flags, "--url", self.base, "--key", key or self.app.key]
        code: int = await asyncio.to_thread(cli.main, argv)
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err

    async def get(self, path: str) -> dict[str, Any] | None:
        response = await self.app.client.get(path, headers=self.app.auth)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def put(self, path: str, body: dict[str, Any]) -> None:
        response = await self.app.client.put(path, json=body, headers=self.app.auth)
        assert response.status_code in (200, 201), response.text


async def test_apply_creates_then_a_second_run_changes_nothing(
    app: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path, FOLDER)
    async with serving(app) as base:
        apply = Runner(app, base, capsys)
        code, out = await apply(root)
        assert code == 0, out
        assert "+ category promos  (categories/promos.yaml)" in out
        assert "~ category marketing  (categories/marketing.yml)" in out  # a built-in
        assert "+ workflow onboarding  (workflows/onboarding.yaml)" in out
        assert "plan: 4 to create, 1 to update" in out
        assert "template welcome: created, version 1" in out
        assert "applied: 4 created, 1 updated, 0 deleted, 0 unchanged" in out
        # Categories before templates before workflows: each names the one before.
        order = [out.index(f"{noun}: created") for noun in ("promos", "welcome", "onboarding")]
        assert order == sorted(order)

        promos = await apply.get("/v1/categories/promos")
        assert promos is not None
        assert promos["default_channels"] == ["email", "inapp"]
        assert promos["digest"] == {"window": "1h", "key": None}
        welcome = await apply.get("/v1/templates/welcome")
        assert welcome is not None
        assert welcome["channels"]["email"]["html"] == (
            "<p>Hello {{ name }},</p>\n<p>Good to see you.</p>\n"
        )
        flow = await apply.get("/v1/workflows/onboarding")
        assert flow is not None
        assert flow["steps"][2]["if"] == "not steps.feed.read"

        # Again: every object as the server keeps it, so nothing is stored twice.
        code, out = await apply(root)
        assert code == 0, out
        assert "= template welcome  (templates/welcome.yaml)" in out
        assert out.rstrip().endswith("nothing to change: 5 unchanged")
        for path in ("/v1/templates/welcome", "/v1/templates/receipt", "/v1/workflows/onboarding"):
            again = await apply.get(path)
            assert again is not None
            assert again["version"] == 1, path


async def test_a_dry_run_shows_each_diff_and_changes_nothing(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path, FOLDER)
    async with serving(lite) as base:
        apply = Runner(lite, base, capsys)
        assert (await apply(root))[0] == 0
        write(
            root,
            {
                "categories/promos.yaml": PROMOS.replace("max_per_hour: 5\n", ""),
                "templates/welcome.yaml": WELCOME.replace("Good to see", "Glad to see"),
                "workflows/second.json": '{"name": "Second", "steps": [{"id": "s", '
                '"type": "channel", "channel": "sms", "template": "receipt"}]}',
            },
        )
        code, out = await apply(root, "--dry-run")
        assert code == 0, out
        lines = out.splitlines()
        assert "~ category promos  (categories/promos.yaml)" in lines
        assert "    -max_per_hour: 5" in lines
        assert "    +max_per_hour: null" in lines
        assert "~ template welcome  (templates/welcome.yaml)" in lines
        assert "    --- template welcome on the server (version 1)" in lines
        assert "    +++ templates/welcome.yaml" in lines
        # Text of several lines is diffed line by line.
        assert "    -      <p>Good to see you.</p>" in lines
        assert "    +      <p>Glad to see you.</p>" in lines
        assert "           <p>Hello {{ name }},</p>" in lines
        assert "+ workflow second  (workflows/second.json)" in lines
        assert "    +name: Second" in lines
        assert "= workflow onboarding  (workflows/onboarding.yaml)" in lines
        assert "plan: 1 to create, 2 to update, 3 unchanged" in lines
        assert lines[-1] == "nothing changed (--dry-run)"

        welcome = await apply.get("/v1/templates/welcome")
        assert welcome is not None
        assert welcome["version"] == 1
        assert await apply.get("/v1/workflows/second") is None
        promos = await apply.get("/v1/categories/promos")
        assert promos is not None
        assert promos["max_per_hour"] == 5

        code, out = await apply(root)
        assert code == 0, out
        assert "template welcome: updated, version 2" in out
        assert "applied: 1 created, 2 updated, 0 deleted, 3 unchanged" in out
        promos = await apply.get("/v1/categories/promos")
        assert promos is not None
        assert promos["max_per_hour"] is None  # removed from the file: back to the default


async def test_prune_deletes_what_the_folder_lacks_of_the_kinds_it_has(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(lite) as base:
        apply = Runner(lite, base, capsys)
        await apply.put("/v1/templates/old", {"channels": {"sms": {"text": "old"}}})
        step = {"id": "s", "type": "channel", "channel": "sms", "template": "old"}
        await apply.put("/v1/workflows/legacy", {"name": "Legacy", "steps": [step]})
        root = write(tmp_path / "all", FOLDER)

        code, out = await apply(root, "--prune", "--dry-run")
        assert code == 0, out
        assert "- workflow legacy: not in the folder; to delete" in out
        assert "! template old: not in the folder; kept (the API cannot delete a template)" in out
        assert "category security" not in out  # built-ins always exist
        assert "plan: 4 to create, 1 to update, 1 to delete, 1 kept" in out
        assert await apply.get("/v1/workflows/legacy") is not None

        code, out = await apply(root, "--prune")
        assert code == 0, out
        assert "workflow legacy: deleted" in out
        # Deletions come after every creation, in the reverse order of the kinds.
        assert out.index("workflow onboarding: created") < out.index("workflow legacy: deleted")
        assert await apply.get("/v1/workflows/legacy") is None
        assert await apply.get("/v1/templates/old") is not None
        code, out = await apply(root, "--prune")
        assert (code, out.rstrip().splitlines()[-1]) == (0, "nothing to change: 5 unchanged")

        # A kind without a folder is not managed: its objects stay.
        only = write(tmp_path / "only", {"categories/promos.yaml": PROMOS})
        code, out = await apply(only, "--prune")
        assert code == 0, out
        assert "workflow" not in out
        assert await apply.get("/v1/workflows/onboarding") is not None
        # An empty folder of a kind manages it: it has none.
        empty = write(tmp_path / "empty", {"workflows/.gitkeep": ""})
        code, out = await apply(empty, "--prune")
        assert code == 0, out
        assert "workflow onboarding: deleted" in out
        assert await apply.get("/v1/workflows/onboarding") is None


async def test_a_folder_with_a_bad_file_is_refused_with_nothing_applied(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(
        tmp_path,
        {
            **FOLDER,
            "workflows/broken.yaml": "name: Broken\nsteps: [\n",
            "templates/welcome.json": RECEIPT,
        },
    )
    async with serving(lite) as base:
        apply = Runner(lite, base, capsys)
        code, out = await apply(root)
        assert code == 2, out
        assert "workflows/broken.yaml:3:1: " in out
        also = "templates/welcome.yaml: template 'welcome' is also given by templates/welcome.json"
        assert also in out
        assert "nothing applied: 2 problem(s)" in out
        assert await apply.get("/v1/categories/promos") is None
        assert await apply.get("/v1/templates/receipt") is None


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("workflows/bomb.yaml", LAUGHS, ":5:"),
        ("workflows/bomb2.yaml", LAUGHS, "more than 100000 values once aliases are expanded"),
        ("workflows/merge.yaml", "a: &a {x: 1, y: 2}\nb: &b {<<: *a, z: 3}\nc: *c\n", "*c"),
        ("templates/list.yaml", "- channels: {}\n", "holds a list: a template is a mapping"),
        ("templates/text.yaml", "just text\n", "holds a text"),
        ("templates/empty.yaml", "# nothing\n", "empty: a template is a mapping"),
        ("templates/huge.json", b" " * (1024 * 1024 + 1), "larger than 1024 KiB"),
        ("templates/deep.yaml", "channels: " + "[" * 40 + "]" * 40, "nested more than 32"),
        ("templates/deep.json", '{"c": ' + "[" * 5000 + "]" * 5000 + "}", "nested more"),
        ("templates/two.yaml", "channels: {}\n---\nchannels: {}\n", ":2:1: a second document"),
        ("templates/code.yaml", "channels: !!python/object/apply:os.system [id]\n", ":1:11:"),
        ("templates/dup.yaml", "channels: {}\nchannels: {}\n", ":2:1: the key 'channels' is"),
        ("templates/dup.json", '{"channels": {}, "channels": {}}', "given twice"),
        ("templates/bad key.yaml", "channels: {}\n", "'bad key' is not a template's key"),
        ("templates/t.yaml", "channels: {}\nname: t\n", "unknown field(s) name: a template"),
        ("workflows/w.yaml", "name: W\n", "a workflow needs steps"),
        ("widgets/w.yaml", "a: 1\n", "widgets/: not a kind of object"),
        ("loose.yaml", "a: 1\n", "loose.yaml: an object's file goes in categories"),
        ("templates/t.txt", "channels: {}\n", "not an object's file"),
        ("templates/bad.json", '{"channels": }', "templates/bad.json:1:14:"),
        ("templates/nul.json", '{"channels": {"sms": {"text": "a\\u0000"}}}', "NUL"),
        ("templates/nan.json", '{"channels": NaN}', "NaN is not a JSON value"),
        ("templates/int.yaml", "channels: {sms: {n: 99999999999999999999}}\n", "64-bit"),
        ("templates/bin.yaml", "channels: !!binary aGk=\n", "a bytes is not a JSON value"),
        ("templates/key.yaml", "channels: {1: x}\n", "the key 1 is not text"),
        ("templates/latin.yaml", b"channels: \xe9\n", "not UTF-8"),
        ("templates/big.json", '{"channels": "' + "x" * 600_000 + '"}', "larger than the API"),
    ],
)
@pytest.mark.parametrize("loader", ["libyaml", "python"])
def test_hostile_and_malformed_files_are_refused_before_anything_is_sent(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    content: str | bytes,
    message: str,
    loader: str,
) -> None:
    if loader == "python":  # where PyYAML was built without libyaml
        monkeypatch.setattr(cli_apply_yaml, "_LOADER", cli_apply_yaml._PureLoader)
    write(tmp_path, {name: content, "categories/fine.yaml": "max_per_hour: 1\n"})
    started = time.monotonic()
    # Port 9 (discard) is never called: the folder is refused first.
    argv = ["apply", str(tmp_path), "--url", "http://127.0.0.1:9", "--key", "k"]
    assert cli.main(argv) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert message in err, err
    assert err.rstrip().endswith("nothing applied: 1 problem(s) in " + str(tmp_path))


async def test_the_servers_refusal_is_reported_and_stops_the_run(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = ONBOARDING.replace("not steps.feed.read", "steps.later.read").replace(
        "template: welcome\n  - id: wait", "template: nope\n  - id: wait"
    )
    root = write(tmp_path, {**FOLDER, "workflows/onboarding.yaml": bad})
    async with serving(lite) as base:
        apply = Runner(lite, base, capsys)
        code, out = await apply(root)
        assert code == 1, out
        head = "storing workflow onboarding (workflows/onboarding.yaml): 422 invalid_workflow: "
        assert head in out
        assert "  - step 0, id feed, field steps[0].template: " in out
        assert "  - step 2, id mail, field steps[2].if: " in out
        assert "stopped: 4 of 5 change(s) made, the rest not tried" in out
        assert await apply.get("/v1/templates/welcome") is not None
        assert await apply.get("/v1/workflows/onboarding") is None

        # A key that may only read: the plan is made, the first write refused.
        reader = await lite.new_tenant("reader", ["read"])
        code, out = await apply(root, key=reader)
        assert code == 1, out
        assert "storing category marketing (categories/marketing.yml): 403 " in out
        assert out.rstrip().endswith("stopped: nothing changed")
        # A key that is not one: refused at the first read.
        code, out = await apply(root, key="ck_nope")
        assert code == 1, out
        assert "reading category marketing: 401 " in out


async def test_the_documented_example_applies(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/operations.md's example files, taken from the page itself."""
    page = (Path(__file__).parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    files = dict(re.findall(r"```yaml\n# config/(\S+)\n(.*?)```", page, re.DOTALL))
    assert sorted(files) == [
        "categories/promos.yaml",
        "layouts/house.yaml",
        "templates/welcome.yaml",
        "workflows/onboarding.yaml",
    ]
    root = write(tmp_path, dict(files))
    async with serving(lite) as base:
        apply = Runner(lite, base, capsys)
        code, out = await apply(root)
        assert (code, out.splitlines()[-1]) == (
            0,
            "applied: 4 created, 0 updated, 0 deleted, 0 unchanged",
        )
        code, out = await apply(root, "--dry-run")
        assert code == 0, out
        assert "plan: 4 unchanged" in out


def test_an_unreachable_server_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, {"categories/fine.yaml": "max_per_hour: 1\n"})
    argv = ["apply", str(tmp_path), "--url", "http://127.0.0.1:9", "--key", "k"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9" in err
    assert err.rstrip().endswith("stopped: nothing changed")
    assert cli.main(["apply", str(tmp_path / "nowhere"), "--key", "k"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_every_request_is_tried_again_after_429_and_503() -> None:
    answers = iter([(503, "0"), (429, "0"), (200, None)])
    seen: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.content))
        status, after = next(answers)
        headers = {"Retry-After": after} if after else {}
        return httpx.Response(status, json={"name": "t", "version": 2}, headers=headers)

    client = httpx.Client(base_url="http://clarion", transport=httpx.MockTransport(handler))
    api = cli_client.Api("http://clarion", "k", client=client)
    assert api.request("PUT", "/v1/templates/t", {"channels": {}}).status_code == 200
    assert seen == [("PUT", b'{"channels":{}}')] * 3
    api.close()


def test_a_server_that_is_not_clarion_is_reported_not_crashed_on(tmp_path: Path) -> None:
    write(tmp_path, {"categories/fine.yaml": "max_per_hour: 1\n"})
    folder = cli_apply_files.read_folder(tmp_path)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>a login page</html>")

    client = httpx.Client(base_url="http://elsewhere", transport=httpx.MockTransport(handler))
    api = cli_client.Api("http://elsewhere", "k", client=client)
    with pytest.raises(cli_apply_plan.Refused) as refused:
        cli_apply_plan.plan(api, folder, prune=True)
    assert refused.value.lines == [
        "reading category fine: HTTP 200, not a Clarion answer: <html>a login page</html>"
    ]
    api.close()


HOUSE = """\
default: true
html: "<main>{{ content }}</main>"
text: "{{ content }}"
locales:
  de: {text: "DE {{ content }}"}
"""


async def test_layouts_are_applied_before_the_templates_naming_them(
    lite: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    letter = '{"channels": {"email": {"subject": "s", "html": "<p>x</p>", "layout": "house"}}}'
    root = write(tmp_path, {"layouts/house.yaml": HOUSE, "templates/letter.json": letter})
    async with serving(lite) as base:
        apply = Runner(lite, base, capsys)
        code, out = await apply(root)
        assert code == 0, out
        assert out.index("layout house: created") < out.index("template letter: created")
        house = await apply.get("/v1/layouts/house")
        assert house is not None
        assert (house["default"], house["locales"]) == (True, {"de": {"text": "DE {{ content }}"}})
        code, out = await apply(root)
        assert out.rstrip().endswith("nothing to change: 2 unchanged"), out

        # A file without `default` says the layout is not the default.
        write(root, {"layouts/house.yaml": HOUSE.replace("default: true\n", "")})
        code, out = await apply(root)
        assert code == 0, out
        assert "~ layout house  (layouts/house.yaml)" in out
        house = await apply.get("/v1/layouts/house")
        assert house is not None
        assert (house["version"], house["default"]) == (2, False)

        # Pruned while a template still names it: the server's refusal stops the run.
        (root / "layouts" / "house.yaml").unlink()
        write(root, {"layouts/.gitkeep": ""})
        code, out = await apply(root, "--prune")
        assert code == 1, out
        assert "- layout house" in out
        assert "409 layout_in_use" in out
        assert await apply.get("/v1/layouts/house") is not None
