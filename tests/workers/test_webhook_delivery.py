"""Webhook deliveries on the worker side, against a real HTTP receiver on 127.0.0.1 (a thread):
signed per Standard Webhooks (verified with the reference library), retried with the same
webhook-id, recovered by the sweep after a worker died mid-delivery, and guarded at delivery
time (DNS rebinding, redirects). Loopback is allowlisted here as an operator would
(``SIFT_OUTBOUND_ALLOW=127.0.0.1/32``); other private addresses stay refused."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks import Webhook

from service.config import get_settings
from service.db.models import (
    Job,
    JobCallback,
    TaskDelivery,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSigningSecret,
)
from service.db.session import SessionLocal
from service.pagination import Pagination
from service.secrets import seal
from service.tenancy import DEFAULT_TENANT_ID, tenant_scope
from service.webhooks import outbox, signing
from service.webhooks import service as webhook_service
from tests.webhook_receiver import Receiver, serving
from tests.workers.conftest import valuation_rows
from workers.tasks import recovery
from workers.tasks import webhooks as tasks
from workers.tasks.jobs import JobTracker


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with serving() as r:
        yield r


@dataclass
class Sent:
    dispatched: list[str] = field(default_factory=list)
    """Delivery ids the outbox sent after a commit."""
    retries: list[tuple[str, float | None]] = field(default_factory=list)
    """(delivery id, countdown) the task or the sweep sent."""


@pytest.fixture()
def sent(migrated: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    monkeypatch.setenv("SIFT_OUTBOUND_ALLOW", "127.0.0.1/32")
    monkeypatch.setenv("SIFT_WEBHOOK_RETRY_BASE_S", "0.2")
    monkeypatch.setenv("SIFT_WEBHOOK_TIMEOUT_S", "5")
    get_settings.cache_clear()
    get_settings.cache_clear()
    record = Sent()
    monkeypatch.setattr(outbox, "dispatch", record.dispatched.append)
    monkeypatch.setattr(
        tasks, "_send", lambda i, countdown=None: record.retries.append((i, countdown))
    )
    yield record
    get_settings.cache_clear()


def _endpoint(url: str, *types: str) -> tuple[str, str]:
    secret = signing.new_secret()
    with SessionLocal() as session:
        row = WebhookEndpoint(
            tenant_id=DEFAULT_TENANT_ID,
            url=url,
            event_types=list(types),
            secret_ciphertext=seal(secret),
        )
        session.add(row)
        session.commit()
        return row.id, secret


def _delivery(delivery_id: str) -> WebhookDelivery:
    with SessionLocal() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


def _log(job_id: str) -> list[Any]:
    """The delivery log as the API reads it (the tenant's session)."""
    with tenant_scope(DEFAULT_TENANT_ID), SessionLocal() as session:
        page = webhook_service.list_deliveries(session, Pagination(100, 0), job_id=job_id)
        return page.items


def test_a_finished_job_is_delivered_signed(receiver: Receiver, sent: Sent) -> None:
    hook_id, secret = _endpoint(receiver.url, "job.succeeded")
    valuation_id, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()  # the event commits with the status
    [delivery_id] = sent.dispatched
    assert tasks.attempt(delivery_id) == "succeeded"
    [(path, headers, body)] = receiver.requests
    assert path == "/hook" and headers["webhook-id"] == delivery_id
    assert headers["content-type"] == "application/json"
    payload = Webhook(secret).verify(body, headers)  # the reference library's check
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job_id"] == job_id and payload["data"]["resource_id"] == valuation_id
    assert payload["data"]["resource_url"] == f"/v1/valuations/{valuation_id}"
    row = _delivery(delivery_id)
    assert (row.status, row.attempts, row.last_status_code) == ("succeeded", 1, 200)
    assert row.response_excerpt == "ok" and row.lease_until is None
    assert row.endpoint_id == hook_id and row.finished_at is not None
    assert tasks.attempt(delivery_id) is None  # a duplicate message finds nothing to do
    assert len(receiver.requests) == 1


def test_a_500_is_retried_with_the_same_webhook_id(receiver: Receiver, sent: Sent) -> None:
    receiver.answers = [(500, b"boom", {})]
    _, secret = _endpoint(receiver.url, "job.failed")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).fail("the pool is empty")
    [delivery_id] = sent.dispatched
    assert tasks.attempt(delivery_id) == "pending"
    row = _delivery(delivery_id)
    assert (row.attempts, row.last_status_code, row.response_excerpt) == (1, 500, "boom")
    assert row.last_error == "the receiver answered status 500"
    assert sent.retries == [(delivery_id, 0.2)]  # due in retry_base_s, sent with a countdown
    time.sleep(0.25)
    assert tasks.attempt(delivery_id) == "succeeded"
    ids = [h["webhook-id"] for _, h, _ in receiver.requests]
    assert ids == [delivery_id, delivery_id]
    for _, headers, body in receiver.requests:
        assert Webhook(secret).verify(body, headers)["data"]["error"] == "the pool is empty"
    bodies = {body for _, _, body in receiver.requests}
    assert len(bodies) == 1  # the same body every time; only timestamp and signature change
    [entry] = _log(job_id)
    assert (entry.status, entry.attempts, entry.last_status_code) == ("succeeded", 2, 200)
    assert entry.event_type == "job.failed" and entry.next_attempt_at is None


def test_backoff_doubles_up_to_its_cap(sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFT_WEBHOOK_RETRY_BASE_S", "10")
    monkeypatch.setenv("SIFT_WEBHOOK_RETRY_MAX_INTERVAL_S", "60")
    get_settings.cache_clear()
    assert [tasks.backoff_s(n) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_a_delivery_is_given_up_after_retry_for_s(
    receiver: Receiver, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIFT_WEBHOOK_RETRY_FOR_S", "0.1")
    get_settings.cache_clear()
    receiver.answers = [(503, b"busy", {})]
    _endpoint(receiver.url, "job.cancelled")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).cancel()
    [delivery_id] = sent.dispatched
    assert tasks.attempt(delivery_id) == "failed"
    row = _delivery(delivery_id)
    assert row.status == "failed" and row.attempts == 1 and row.next_attempt_at is None
    assert row.last_error == "the receiver answered status 503; gave up after 1 attempts"
    assert sent.retries == []


def test_only_a_bounded_excerpt_of_the_answer_is_kept(receiver: Receiver, sent: Sent) -> None:
    receiver.answers = [(500, b"x" * 100_000, {})]
    _endpoint(receiver.url, "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    tasks.attempt(delivery_id)
    assert _delivery(delivery_id).response_excerpt == "x" * 500


def test_a_worker_killed_mid_delivery_loses_nothing(
    receiver: Receiver, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt claimed the delivery (its lease committed) and died before an answer: the
    recovery sweep sends it again once the lease ran out; the receiver gets it then."""
    monkeypatch.setenv("SIFT_WEBHOOK_TIMEOUT_S", "0.3")
    get_settings.cache_clear()
    monkeypatch.setattr(tasks, "LEASE_MARGIN_S", 0.0)
    _, secret = _endpoint(receiver.url, "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    claim = tasks._claim(delivery_id, get_settings())  # ... and the worker dies
    assert claim is not None and not isinstance(claim, str)
    assert tasks.attempt(delivery_id) is None  # held: nobody else attempts it
    assert recovery.sweep().webhooks == []  # in flight
    time.sleep(0.35)
    later = datetime.now(UTC) + timedelta(seconds=61)  # its last send is stale too
    assert recovery.sweep(now=later).webhooks == [delivery_id]
    assert sent.retries == [(delivery_id, None)]
    assert recovery.sweep(now=later).webhooks == []  # sent once per redispatch_s
    assert tasks.attempt(delivery_id) == "succeeded"
    [(_, headers, body)] = receiver.requests
    Webhook(secret).verify(body, headers)
    assert _delivery(delivery_id).attempts == 2


def test_a_lost_send_is_sent_again_by_the_sweep(sent: Sent) -> None:
    _endpoint("https://hooks.example.com/x", "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched  # pretend this message never reached a worker
    assert recovery.sweep().webhooks == []  # sent just now
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert recovery.sweep(now=later).webhooks == [delivery_id]


def test_dns_rebinding_at_delivery_is_refused(
    receiver: Receiver, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name passed the check at registration; at delivery it resolves to a private
    address: nothing is sent, and the delivery fails at once (no retries to probe with)."""
    real = socket.getaddrinfo

    def rebound(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    _endpoint("https://rebind.example.com/hook", "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    assert tasks.attempt(delivery_id) == "failed"
    row = _delivery(delivery_id)
    assert row.last_error is not None and "forbidden address (private)" in row.last_error
    assert row.last_error.startswith("refused by the outbound policy")
    assert sent.retries == [] and receiver.requests == []


def test_redirects_are_not_followed(receiver: Receiver, sent: Sent) -> None:
    with serving(path="/steal") as target:
        receiver.answers = [(307, b"", {"location": target.url})]
        _endpoint(receiver.url, "job.succeeded")
        _, job_id = valuation_rows("running")
        JobTracker(job_id).succeed()
        [delivery_id] = sent.dispatched
        assert tasks.attempt(delivery_id) == "failed"
        assert "redirects are not followed" in (_delivery(delivery_id).last_error or "")
        assert len(receiver.requests) == 1 and target.requests == []


def test_callback_url_and_job_started(receiver: Receiver, sent: Sent) -> None:
    """A job's callback_url hears of its end (signed with the tenant's secret, and the
    previous one within the rotation grace); endpoints may also subscribe to job.started."""
    current, previous = signing.new_secret(), signing.new_secret()
    with SessionLocal() as session:
        session.add(
            WebhookSigningSecret(
                tenant_id=DEFAULT_TENANT_ID,
                ciphertext=seal(current),
                previous_ciphertext=seal(previous),
                previous_until=datetime.now(UTC) + timedelta(hours=1),
            )
        )
        session.commit()
    started_hook, _ = _endpoint("https://started.example.com/x", "job.started")
    _, job_id = valuation_rows("queued")
    with SessionLocal() as session:
        session.add(JobCallback(tenant_id=DEFAULT_TENANT_ID, job_id=job_id, url=receiver.url))
        session.commit()
    tracker = JobTracker(job_id)
    assert tracker.start()
    [started] = sent.dispatched
    assert _delivery(started).endpoint_id == started_hook  # the callback_url is not told
    tracker.succeed()
    [_, finished] = sent.dispatched
    assert _delivery(finished).endpoint_id is None
    assert tasks.attempt(finished) == "succeeded"
    [(_, headers, body)] = receiver.requests
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (current, previous):
        assert Webhook(secret).verify(body, headers)["type"] == "job.succeeded"


def test_the_sweep_failing_a_job_writes_its_event(sent: Sent) -> None:
    _endpoint("https://hooks.example.com/x", "job.failed")
    _, job_id = valuation_rows("running")
    with SessionLocal() as session:  # a task that cannot be sent again (no payload)
        session.add(
            TaskDelivery(
                task_id="lost",
                job_id=job_id,
                task_name="sift.valuation.featurize",
                payload=None,
                deliveries=1,
                heartbeat_at=datetime.now(UTC) - timedelta(hours=2),
                resent=0,
            )
        )
        session.commit()
    repairs = recovery.sweep()
    assert repairs.failed == [job_id]
    [delivery_id] = sent.dispatched
    with SessionLocal() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        event = session.get(WebhookEvent, delivery.event_id)
        assert event is not None and event.type == "job.failed"
        data = json.loads(event.payload)["data"]
        job = session.get(Job, job_id)
        assert job is not None and data["error"] == job.error and "lost" in data["error"]
