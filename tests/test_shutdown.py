"""A stopping process finishes what it can within its deadline and hands back the rest."""

from __future__ import annotations

from harness import make_settings, running
from webhook_sink import WebhookSink


async def test_stop_hands_back_unfinished_sends(
    backend: tuple[str, str], sink: WebhookSink
) -> None:
    settings = make_settings(*backend, shutdown_timeout=0.2, webhook_timeout=30.0)
    sink.delay = 2.0  # every send is still in flight when the first process stops
    async with running(settings) as app:
        await app.put_recipient("u", webhook_url=f"{sink.url}/u")
        await app.put_template("t", {"channels": {"webhook": {"body": {"n": "{{ n }}"}}}})
        items = [
            {"template": "t", "to": {"recipient_id": "u"}, "data": {"n": i}} for i in range(20)
        ]
        response = await app.client.post(
            "/v1/notifications/batch", json={"notifications": items}, headers=app.auth
        )
        ids = [r["id"] for r in response.json()["results"]]
        await sink.wait_for(20, timeout=30, answered=False)
    # Stopped with every send unanswered: nothing was recorded as sent.
    sink.delay = 0.0
    async with running(settings) as app:
        await app.drain()
        notes = [await app.notification(nid) for nid in ids]
    assert all(n["deliveries"][0]["status"] == "sent" for n in notes)
    # Each was sent again after the hand-back (the first answers came too late to count).
    assert sink.arrived >= 40
    keys: dict[str, set[str]] = {}
    for request in sink.received:
        keys.setdefault(request.body.decode(), set()).add(request.headers["idempotency-key"])
    assert all(len(k) == 1 for k in keys.values())
