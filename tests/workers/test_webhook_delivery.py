"""Webhook deliveries on the worker side, against a real HTTP receiver on 127.0.0.1 (a thread):
signed per Standard Webhooks (verified with the reference library), retried with the same
webhook-id, recovered by the sweep after a worker died mid-delivery, and guarded at delivery
time (DNS rebinding, redirects). Loopback is allowlisted here as an operator would
(``SIFT_OUTBOUND_ALLOW=127.0.0.1/32``); other private addresses stay refused."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy import event as sqlalchemy_event
from standardwebhooks import Webhook

from service import secrets
from service.config import get_settings
from service.db.models import (
    Job,
    JobCallback,
    Sample,
    Score,
    Selection,
    TaskDelivery,
    Valuation,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSigningSecret,
)
from service.db.session import SessionLocal, for_writes, get_engine
from service.jobs import delete_resources
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
    assert row.response_excerpt is None and row.lease_until is None
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
    assert (row.attempts, row.last_status_code, row.response_excerpt) == (1, 500, None)
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


def test_no_part_of_the_answer_is_kept(receiver: Receiver, sent: Sent) -> None:
    """An allowlisted internal host's answer is no member's to read: the delivery log shows
    its status code only, and never an excerpt a row may still hold from before."""
    receiver.answers = [(500, b"internal: the admin password is hunter2", {})]
    _endpoint(receiver.url, "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    assert tasks.attempt(delivery_id) == "pending"
    row = _delivery(delivery_id)
    assert row.response_excerpt is None and row.last_error == "the receiver answered status 500"
    with SessionLocal() as session:  # written by an older version
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(response_excerpt="internal: the admin password is hunter2")
        )
        session.commit()
    [entry] = _log(job_id)
    assert entry.response_excerpt is None and entry.last_status_code == 500


def test_a_reply_with_nul_bytes_is_recorded(
    receiver: Receiver, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres text refuses NUL (and unpaired surrogates): nothing of that kind reaches a
    column, so the attempt's outcome is written (else the delivery stays pending and is sent
    again forever)."""
    receiver.answers = [(500, b"\x00" * 600, {})]
    _endpoint(receiver.url, "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    assert tasks.attempt(delivery_id) == "pending"
    assert _delivery(delivery_id).last_status_code == 500
    time.sleep(0.25)

    def garbled(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("illegal header \x00\ud800 from the receiver")

    def client(*_: Any, **__: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(garbled))

    monkeypatch.setattr(tasks, "guarded_client", client)
    assert tasks.attempt(delivery_id) == "pending"
    row = _delivery(delivery_id)
    assert row.attempts == 2 and row.last_error is not None
    assert row.last_error.startswith("RemoteProtocolError: illegal header")
    assert "\x00" not in row.last_error and "\ud800" not in row.last_error


def test_a_delivery_past_its_window_is_failed_not_sent(receiver: Receiver, sent: Sent) -> None:
    """An attempt that crashes after its POST (so never records its outcome) is sent again by
    the sweep each time its lease runs out: once ``retry_for_s`` is over, the next copy fails
    the delivery instead of POSTing again."""
    _endpoint(receiver.url, "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    claim = tasks._claim(delivery_id, get_settings())  # ... POSTs, and crashes
    assert isinstance(claim, tasks._Claim)
    old = datetime.now(UTC) - timedelta(days=2)
    with SessionLocal() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(
                created_at=old,
                lease_until=old + timedelta(seconds=40),
                last_error="ReadTimeout: timed out",
            )
        )
        session.commit()
    assert tasks.attempt(delivery_id) == "failed"
    row = _delivery(delivery_id)
    assert receiver.requests == [] and row.status == "failed" and row.attempts == 1
    assert row.next_attempt_at is None and row.lease_until is None
    assert row.last_error == (
        "ReadTimeout: timed out; not delivered within 86400 s; gave up after 1 attempts"
    )
    assert recovery.sweep(now=datetime.now(UTC) + timedelta(hours=2)).webhooks == []


@contextlib.contextmanager
def _trickling(for_s: float) -> Iterator[str]:
    """A loopback receiver that reads the request, then sends its answer's status line and
    headers a byte every 50 ms (each read is quick; the answer takes ``for_s``), then a
    complete 200; its URL."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            end = time.monotonic() + for_s
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
                while time.monotonic() < end:
                    conn.sendall(b"a")
                    time.sleep(0.05)
                conn.sendall(b"\r\ncontent-length: 0\r\n\r\n")
            except OSError:
                pass  # the client hung up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        server.close()
        thread.join(10)


def test_an_attempt_ends_by_its_deadline(sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's timeouts are per read: a receiver trickling its headers would hold the attempt
    past its lease (and the sweep would send a second copy meanwhile). The attempt ends at
    ``webhook_timeout_s`` in all and is a failed attempt, retried."""
    monkeypatch.setenv("SIFT_WEBHOOK_TIMEOUT_S", "1")
    get_settings.cache_clear()
    with _trickling(for_s=4.0) as url:
        _endpoint(url, "job.succeeded")
        _, job_id = valuation_rows("running")
        JobTracker(job_id).succeed()
        [delivery_id] = sent.dispatched
        start = time.monotonic()
        assert tasks.attempt(delivery_id) == "pending"
        took = time.monotonic() - start
    assert 0.9 < took < 2.5
    row = _delivery(delivery_id)
    assert row.last_error is not None and row.last_error.startswith("ReadTimeout")
    assert row.attempts == 1 and row.lease_until is None
    assert sent.retries == [(delivery_id, 0.2)]
    assert tasks.LEASE_MARGIN_S > 0  # the lease (timeout + margin) outlasts every attempt


def test_a_slow_name_lookup_ends_by_the_deadline(
    sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """getaddrinfo has no timeout of its own: the attempt's deadline bounds it too."""
    monkeypatch.setenv("SIFT_WEBHOOK_TIMEOUT_S", "0.5")
    get_settings.cache_clear()
    real = socket.getaddrinfo

    def slow(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.example.com":
            time.sleep(3)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    _endpoint("https://slow-dns.example.com/hook", "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    start = time.monotonic()
    assert tasks.attempt(delivery_id) == "pending"
    assert time.monotonic() - start < 2.0
    assert (_delivery(delivery_id).last_error or "").startswith("ConnectTimeout")


def test_an_unopenable_secret_is_retried(
    receiver: Receiver,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that cannot open the signing secret (e.g. started without SIFT_SECRET_KEY)
    logs an error and retries later: another worker, or this one fixed, delivers it."""
    _endpoint(receiver.url, "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    real = secrets.unseal

    def unavailable(*_: Any, **__: Any) -> str:
        raise secrets.SecretUnavailable("no key opens it")

    monkeypatch.setattr(secrets, "unseal", unavailable)
    with caplog.at_level(logging.ERROR, logger=tasks.__name__):
        assert tasks.attempt(delivery_id) == "pending"
    assert any("signing secret cannot be opened" in r.getMessage() for r in caplog.records)
    row = _delivery(delivery_id)
    assert row.status == "pending" and row.attempts == 1 and row.lease_until is None
    assert row.last_error == "the signing secret cannot be opened: no key opens it"
    assert sent.retries == [(delivery_id, 0.2)] and receiver.requests == []
    monkeypatch.setattr(secrets, "unseal", real)
    time.sleep(0.25)
    assert tasks.attempt(delivery_id) == "succeeded"
    assert len(receiver.requests) == 1


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
    # that copy may wait behind a long job: it is a send like any other now (task_lost_s)
    assert recovery.sweep(now=later + timedelta(seconds=120)).webhooks == []
    assert tasks.attempt(delivery_id) == "succeeded"
    [(_, headers, body)] = receiver.requests
    Webhook(secret).verify(body, headers)
    assert _delivery(delivery_id).attempts == 2


def test_a_lost_send_is_sent_again_by_the_sweep(sent: Sent) -> None:
    """A send no attempt took up may wait behind a long job on the worker's queue: it is sent
    again after ``task_lost_s``, not every ``webhook_redispatch_s`` (a copy per minute would
    pile up there)."""
    _endpoint("https://hooks.example.com/x", "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched  # pretend this message never reached a worker
    assert recovery.sweep().webhooks == []  # sent just now
    now = datetime.now(UTC)
    assert recovery.sweep(now=now + timedelta(seconds=61)).webhooks == []
    assert recovery.sweep(now=now + timedelta(seconds=1800)).webhooks == []
    assert recovery.sweep(now=now + timedelta(seconds=3601)).webhooks == [delivery_id]
    assert sent.retries == [(delivery_id, None)]


def test_a_send_no_worker_takes_up_fails_with_its_window(sent: Sent) -> None:
    """No worker on ``sift.events`` at all: the sweep re-sends once per ``task_lost_s`` while
    the delivery's window lasts, then fails it instead of queueing a copy an hour for ever."""
    _endpoint("https://hooks.example.com/x", "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    now = datetime.now(UTC)
    assert recovery.sweep(now=now + timedelta(hours=23)).webhooks == [delivery_id]
    assert recovery.sweep(now=now + timedelta(hours=25)).webhooks == []  # past the day
    assert sent.retries == [(delivery_id, None)]
    with SessionLocal() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.status == "failed" and row.attempts == 0
        assert row.last_error is not None and "not delivered within 86400 s" in row.last_error


def test_the_sweeps_compare_and_set_takes_the_write_lock_first(sent: Sent, migrated: str) -> None:
    """SQLite: another connection commits between the sweep's read and its write; the write
    must not then fail on a stale snapshot (its transaction begins IMMEDIATE)."""
    if not migrated.startswith("sqlite"):
        pytest.skip("a SQLite transaction mode")
    _endpoint("https://hooks.example.com/x", "job.succeeded")
    _, job_id = valuation_rows("running")
    JobTracker(job_id).succeed()
    [delivery_id] = sent.dispatched
    engine = get_engine()
    path = engine.url.database
    assert path is not None
    wrote: list[bool] = []

    def other_writer(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if wrote or not statement.lstrip().startswith("SELECT webhook_deliveries.id"):
            return
        other = sqlite3.connect(path, timeout=0.2)
        try:
            other.execute("UPDATE webhook_endpoints SET url = url || 'x'")
            other.commit()
            wrote.append(True)
        except sqlite3.OperationalError:  # the sweep holds the write lock: as it should
            wrote.append(False)
        finally:
            other.close()

    sqlalchemy_event.listen(engine, "after_cursor_execute", other_writer)
    try:
        later = datetime.now(UTC) + timedelta(hours=2)
        assert tasks.resend_due(now=later) == [delivery_id]
    finally:
        sqlalchemy_event.remove(engine, "after_cursor_execute", other_writer)
    assert wrote == [False]


def test_an_endpoint_deleted_while_its_job_finishes(sent: Sent) -> None:
    """Postgres: the endpoint's DELETE is under way when the job's status change reads the
    endpoints; the status change still commits (the endpoint's delivery goes with it)."""
    hook_id, _ = _endpoint("https://hooks.example.com/x", "job.succeeded")
    _, job_id = valuation_rows("running")
    deleting = SessionLocal(bind=for_writes(get_engine()))
    deleting.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == hook_id))
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            JobTracker(job_id).succeed()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    thread = threading.Thread(target=finish)
    thread.start()
    time.sleep(0.5)  # the job's transaction reached the endpoints, and waits
    deleting.commit()
    deleting.close()
    thread.join(60)
    assert not thread.is_alive() and errors == []
    with SessionLocal() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        assert session.scalars(select(WebhookDelivery)).all() == []


def test_deleting_a_live_job_delivers_its_cancellation(receiver: Receiver, sent: Sent) -> None:
    """A running job's resource deleted: the job ends, and its callback_url and endpoints are
    told (``job.cancelled``); a finished job's deletion tells nobody anything."""
    _endpoint(receiver.url, "job.cancelled")
    valuation_id, job_id = valuation_rows("running")
    done_id, _ = valuation_rows("succeeded")
    with SessionLocal() as session:
        session.add(JobCallback(tenant_id=DEFAULT_TENANT_ID, job_id=job_id, url=receiver.url))
        secret = seal(signing.new_secret())
        session.add(WebhookSigningSecret(tenant_id=DEFAULT_TENANT_ID, ciphertext=secret))
        session.commit()
    with SessionLocal(bind=for_writes(get_engine())) as session:
        parts = (Score.valuation_id, Sample.valuation_id, Selection.valuation_id)
        delete_resources(session, Valuation, [valuation_id, done_id], parts=parts)
        session.commit()
    assert len(sent.dispatched) == 2  # the endpoint and the callback_url
    for delivery_id in sent.dispatched:
        assert tasks.attempt(delivery_id) == "succeeded"
    with SessionLocal() as session:
        assert session.get(Job, job_id) is None
    for _, _, body in receiver.requests:
        data = json.loads(body)
        assert data["type"] == "job.cancelled" and data["data"]["job_id"] == job_id
        assert data["data"]["status"] == "cancelled"


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
