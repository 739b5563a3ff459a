"""SES bounces and complaints through SNS: signatures checked against a certificate chain
made in the test and served over HTTPS by a local SNS, subscriptions confirmed, and the
next email to a bounced address not sent (the SES stand-in receives nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from clarion.providers.sns import canonical
from harness import Harness, make_settings, running
from standins import serving
from standins.ses import SesStandIn
from standins.sns import SnsStandIn, _certificate, ses_bounce, ses_complaint
from standins.sns import canonical as standin_canonical
from test_suppressions import (
    PUBLIC,
    SECRET_KEY,
    assert_suppressed,
    prepare,
    send_email,
    suppressions,
)


@pytest.fixture
async def sns() -> AsyncIterator[SnsStandIn]:
    async with serving(SnsStandIn()) as server:
        yield server


@pytest.fixture
async def ses() -> AsyncIterator[SesStandIn]:
    async with serving(SesStandIn()) as server:
        yield server


def _settings(backend: tuple[str, str], sns: SnsStandIn) -> Any:
    return make_settings(
        *backend,
        public_url=PUBLIC,
        secret_key=SECRET_KEY,
        sns_cert_hosts=r"^localhost$",
        sns_ca_file=sns.ca_file,
    )


@pytest.fixture
async def clarion(backend: tuple[str, str], sns: SnsStandIn) -> AsyncIterator[Harness]:
    async with running(_settings(backend, sns)) as app:
        yield app


@pytest.fixture
async def single(migrated_sqlite_url: str, sns: SnsStandIn) -> AsyncIterator[Harness]:
    async with running(_settings((migrated_sqlite_url, "embedded://"), sns)) as app:
        yield app


async def configure_ses(app: Harness, ses: SesStandIn, topics: list[str]) -> None:
    config = {
        "region": ses.region,
        "access_key_id": "AKIDSTANDIN",
        "secret_access_key": "standin-secret",
        "from": "Acme <no-reply@acme.test>",
        "base_url": ses.url,
        "feedback_topic_arns": topics,
    }
    body = {"channel": "email", "kind": "ses", "config": config}
    response = await app.client.put("/v1/providers/ses-main", json=body, headers=app.auth)
    assert response.status_code in (200, 201), response.text


def feedback_url(app: Harness, provider: str = "ses-main", tenant: str | None = None) -> str:
    return f"/v1/providers/{provider}/feedback?tenant={tenant or app.tenant_id}"


def test_the_canonical_string_is_snss() -> None:
    message = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:t",
        "Message": "hello\nworld",
        "Timestamp": "2026-11-25T10:00:00.000Z",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    }
    expected = (
        b"Message\nhello\nworld\nMessageId\nm-1\nTimestamp\n2026-11-25T10:00:00.000Z\n"
        b"TopicArn\narn:aws:sns:eu-west-1:123456789012:t\nType\nNotification\n"
    )
    assert canonical(message) == expected == standin_canonical(message)
    with_subject = {**message, "Subject": "Amazon SES Email Event Notification"}
    assert b"Subject\nAmazon SES Email Event Notification\nTimestamp" in canonical(with_subject)


async def test_a_hard_bounce_suppresses_the_address(
    clarion: Harness, ses: SesStandIn, sns: SnsStandIn
) -> None:
    topic = sns.topic()
    await configure_ses(clarion, ses, [topic])
    await prepare(clarion)
    url = feedback_url(clarion)

    # The subscription is confirmed at the SubscribeURL SNS gave.
    confirmation = sns.subscription(topic)
    response = await sns.deliver(clarion.client, url, confirmation)
    assert response.status_code == 204, response.text
    [confirmed] = sns.confirmations
    assert (confirmed.topic_arn, confirmed.token) == (topic, confirmation["Token"])

    first = await send_email(clarion)
    assert first["status"] == "sent", first
    [sent] = ses.sent
    assert sent.message["X-Clarion-Delivery-Id"] == first["id"]

    # SES reports the address in its own case; the list keeps one form.
    bounce = ses_bounce("alex@example.com", delivery_id=first["id"])
    response = await sns.deliver(clarion.client, url, sns.notification(topic, bounce))
    assert response.status_code == 204, response.text
    [entry] = await suppressions(clarion)
    assert (entry["email"], entry["reason"], entry["source"]) == (
        "alex@example.com",
        "bounced",
        "ses",
    )
    assert entry["delivery_id"] == first["id"]
    assert "550 5.1.1" in entry["detail"]
    bounced = await clarion.client.get(f"/v1/deliveries/{first['id']}", headers=clarion.auth)
    assert (bounced.json()["status"], bounced.json()["reason"]) == ("failed", "bounced")

    second = await send_email(clarion)
    await assert_suppressed(clarion, second, "bounced")
    assert len(ses.sent) == 1

    gone = await clarion.client.delete("/v1/suppressions/Alex@Example.com", headers=clarion.auth)
    assert gone.status_code == 204
    assert (await send_email(clarion))["status"] == "sent"
    assert len(ses.sent) == 2


async def test_a_complaint_suppresses_and_signature_version_2_is_read(
    clarion: Harness, ses: SesStandIn, sns: SnsStandIn
) -> None:
    topic = sns.topic()
    await configure_ses(clarion, ses, [topic])
    await prepare(clarion)
    message = sns.notification(topic, ses_complaint("Alex@example.com"), version="2")
    response = await sns.deliver(clarion.client, feedback_url(clarion), message)
    assert response.status_code == 204, response.text
    [entry] = await suppressions(clarion)
    assert (entry["reason"], entry["detail"]) == ("complained", "abuse")
    await assert_suppressed(clarion, await send_email(clarion), "complained")
    assert ses.sent == []


async def test_a_transient_bounce_suppresses_nothing(
    single: Harness, ses: SesStandIn, sns: SnsStandIn
) -> None:
    topic = sns.topic()
    await configure_ses(single, ses, [topic])
    bounce = ses_bounce("alex@example.com", bounce_type="Transient")
    response = await sns.deliver(
        single.client, feedback_url(single), sns.notification(topic, bounce)
    )
    assert response.status_code == 204
    assert await suppressions(single) == []
    metrics = (await single.client.get("/metrics")).text
    assert 'clarion_email_feedback_total{kind="soft_bounce",source="ses"}' in metrics


def _forgeries(sns: SnsStandIn, topic: str) -> dict[str, dict[str, str]]:
    """SNS messages that must be refused, by what is wrong with them."""
    bounce = ses_bounce("alex@example.com")
    good = sns.notification(topic, bounce)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    expired = _certificate(
        "sns.eu-west-1.amazonaws.com",
        other_key,
        (sns.ca, sns.ca_key),
        valid=(now - timedelta(days=30), now - timedelta(days=1)),
    )
    sns.extra["/expired.pem"] = expired
    unsigned = {k: v for k, v in good.items() if k != "Signature"}
    return {
        "signed by another key": sns.notification(topic, bounce, key=other_key),
        "no signature": unsigned,
        "a changed message": {**good, "Message": good["Message"].replace("alex", "bob")},
        "an unknown signature version": {**good, "SignatureVersion": "3"},
        "a certificate over http": sns.notification(
            topic, bounce, cert_url=sns.cert_url.replace("https://", "http://")
        ),
        "a certificate on another host": sns.notification(
            topic, bounce, cert_url=sns.cert_url.replace("localhost", "127.0.0.1")
        ),
        "a certificate with user info": sns.notification(
            topic, bounce, cert_url=sns.cert_url.replace("localhost", "evil@localhost")
        ),
        "a missing certificate": sns.notification(
            topic, bounce, cert_url=sns.base + "/missing.pem"
        ),
        "an expired certificate": sns.notification(
            topic, bounce, key=other_key, cert_url=sns.base + "/expired.pem"
        ),
        "a stale timestamp": sns.notification(topic, bounce, at=now - timedelta(hours=2)),
        "a timestamp from the future": sns.notification(topic, bounce, at=now + timedelta(hours=1)),
        "another topic": sns.notification(sns.topic("someone-elses"), bounce),
        "another topic's subscription": sns.subscription(sns.topic("someone-elses")),
    }


async def test_forged_notifications_are_refused_and_record_nothing(
    single: Harness, ses: SesStandIn, sns: SnsStandIn
) -> None:
    topic = sns.topic()
    await configure_ses(single, ses, [topic])
    url = feedback_url(single)
    for what, message in _forgeries(sns, topic).items():
        response = await sns.deliver(single.client, url, message)
        assert response.status_code == 403, (what, response.text)
        assert response.json()["error"]["code"] == "invalid_signature", what
    for body in (b"not json", b"[]", b'{"Type": "Notification"}', b'{"Type": "Other"}'):
        response = await single.client.post(
            url, content=body, headers={"content-type": "text/plain"}
        )
        assert response.status_code == 403, body
    assert await suppressions(single) == []
    assert sns.confirmations == []


async def test_feedback_needs_a_configured_topic_and_a_known_provider(
    single: Harness, ses: SesStandIn, sns: SnsStandIn
) -> None:
    topic = sns.topic()
    await configure_ses(single, ses, [])
    message = sns.notification(topic, ses_bounce("alex@example.com"))
    response = await sns.deliver(single.client, feedback_url(single), message)
    assert response.status_code == 403
    for url in (
        feedback_url(single, provider="nope"),
        feedback_url(single, provider="sandbox"),
        feedback_url(single, tenant="ten_unknown"),
    ):
        response = await sns.deliver(single.client, url, message)
        assert response.status_code == 404, url
    missing_tenant = await sns.deliver(single.client, "/v1/providers/ses-main/feedback", message)
    assert missing_tenant.status_code == 422
    assert await suppressions(single) == []


async def test_a_failing_subscribe_url_is_retried_later(
    single: Harness, ses: SesStandIn, sns: SnsStandIn
) -> None:
    topic = sns.topic()
    await configure_ses(single, ses, [topic])
    sns.upcoming.append(503)
    confirmation = sns.subscription(topic)
    response = await sns.deliver(single.client, feedback_url(single), confirmation)
    assert response.status_code == 503
    assert sns.confirmations == []
    response = await sns.deliver(single.client, feedback_url(single), confirmation)
    assert response.status_code == 204
    assert len(sns.confirmations) == 1


async def test_another_tenant_is_not_suppressed(
    clarion: Harness, ses: SesStandIn, sns: SnsStandIn
) -> None:
    topic = sns.topic()
    await configure_ses(clarion, ses, [topic])
    other = {"Authorization": f"Bearer {await clarion.new_tenant('globex')}"}
    await prepare(clarion, auth=other)
    message = sns.notification(topic, ses_bounce("alex@example.com"))
    response = await sns.deliver(clarion.client, feedback_url(clarion), message)
    assert response.status_code == 204
    assert len(await suppressions(clarion)) == 1
    assert await suppressions(clarion, auth=other) == []
    assert (await send_email(clarion, auth=other))["status"] == "sent"
