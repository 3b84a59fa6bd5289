"""Webhook deliveries: one task per attempt, retried with backoff, at least once.

A delivery row (``webhook_deliveries``, written by ``service.webhooks.outbox`` with the job's
status change) is attempted by ``sift.webhook.deliver``:

1. The attempt *claims* it (compare-and-set: pending, due, no live lease): ``attempts`` + 1 and
   a lease of the timeout plus 30 s, committed before anything is sent. Any number of copies
   of the task may arrive (the outbox's send, a countdown retry, the sweep's resends); one
   claims, the others return.
2. It POSTs the event's stored body, signed per Standard Webhooks (``webhook-id`` is the
   delivery's id on every attempt; a fresh ``webhook-timestamp`` and signature each time)
   through the outbound guard (``workers.outbound``: checked again at connect time against the
   address dialled, so DNS rebinding gains nothing; redirects are never followed).
3. A 2xx ends it (succeeded). Anything else (another status, a timeout, a refused connection)
   schedules the next attempt after ``retry_base_s * 2**(attempts-1)`` (at most
   ``retry_max_interval_s``) until ``retry_for_s`` after the event; then it is failed. A URL
   the guard refuses (a forbidden address, a redirect) fails it at once. Only the status code,
   a short error and the first 500 characters of the answer are kept.

:func:`resend_due` (run by every recovery sweep) sends the task again for each delivery that
is due and in nobody's hands: its send was lost, its retry is due, or the worker holding it
died (its lease ran out). So a worker killed mid-delivery loses nothing; the receiver may see
the same ``webhook-id`` twice, which is what it deduplicates on.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service import secrets
from service.config import Settings, get_settings
from service.db.models import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSigningSecret,
)
from service.db.session import SessionLocal, for_writes, get_engine
from service.queue import celery_app, send
from service.webhooks import signing
from workers.contracts import TASK_QUEUES, WEBHOOK_DELIVER
from workers.outbound import OutboundRefused, guarded_client

log = logging.getLogger(__name__)

EXCERPT_CHARS = 500
EXCERPT_BYTES = 2048
ERROR_CHARS = 500
LEASE_MARGIN_S = 30.0
USER_AGENT = "Sift-Webhooks/1"
_NO_UPDATE = {"synchronize_session": False}


def _now() -> datetime:
    return datetime.now(UTC)


@celery_app.task(name=WEBHOOK_DELIVER, ignore_result=True)
def deliver(delivery_id: str) -> None:
    attempt(delivery_id)


def backoff_s(attempts: int, ws: Settings | None = None) -> float:
    """The wait after the ``attempts``-th failed attempt."""
    ws = ws or get_settings()
    delay = ws.webhook_retry_base_s * 2 ** max(attempts - 1, 0)
    return float(min(delay, ws.webhook_retry_max_interval_s))


class _Claim:
    def __init__(self, row: WebhookDelivery, body: bytes, keys: list[str]) -> None:
        self.id, self.url, self.attempts = row.id, row.url, row.attempts
        self.created_at, self.body, self.keys = row.created_at, body, keys


def attempt(delivery_id: str) -> str | None:
    """One attempt of a delivery, if it is due and nobody holds it; its status afterwards
    (None when there was nothing to do)."""
    ws = get_settings()
    claim = _claim(delivery_id, ws)
    if claim is None:
        return None
    if isinstance(claim, str):  # nothing to sign with
        return _finish(delivery_id, None, failed=True, error=claim, code=None, excerpt=None)
    code, excerpt, error, permanent = _post(claim, ws)
    if code is not None and 200 <= code < 300:
        return _finish(claim.id, claim.attempts, failed=False, error=None, code=code,
                       excerpt=excerpt)  # fmt: skip
    if error is None:
        error = f"the receiver answered status {code}"
    done = _now()
    delay = backoff_s(claim.attempts, ws)
    due = done + timedelta(seconds=delay)
    if permanent or (due - claim.created_at).total_seconds() > ws.webhook_retry_for_s:
        if not permanent:
            error = f"{error}; gave up after {claim.attempts} attempts"
        return _finish(claim.id, claim.attempts, failed=True, error=error, code=code,
                       excerpt=excerpt)  # fmt: skip
    countdown = delay <= ws.webhook_countdown_max_s
    with SessionLocal(bind=for_writes(get_engine())) as session:
        moved = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claim.id, WebhookDelivery.attempts == claim.attempts)
            .values(
                status="pending",
                next_attempt_at=due,
                lease_until=None,
                dispatched_at=due if countdown else None,
                last_status_code=code,
                last_error=error[:ERROR_CHARS],
                response_excerpt=excerpt,
            )
            .execution_options(**_NO_UPDATE)
        ).rowcount
        session.commit()
    if moved and countdown:
        _send(claim.id, countdown=delay)
    log.info("webhook delivery %s: attempt %d failed (%s); next in %.0f s",
             claim.id, claim.attempts, error, delay)  # fmt: skip
    return "pending"


def _claim(delivery_id: str, ws: Settings) -> _Claim | str | None:
    now = _now()
    with SessionLocal(bind=for_writes(get_engine())) as session:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now + timedelta(seconds=1),
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now),
            )
            .values(
                attempts=WebhookDelivery.attempts + 1,
                lease_until=now + timedelta(seconds=ws.webhook_timeout_s + LEASE_MARGIN_S),
                last_attempt_at=now,
            )
            .execution_options(**_NO_UPDATE)
        ).rowcount
        if not claimed:
            session.commit()
            return None
        row = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .execution_options(populate_existing=True)
        ).one()
        event = session.get(WebhookEvent, row.event_id)
        try:
            keys = _signing_keys(session, row, now)
        except (LookupError, secrets.SecretUnavailable) as exc:
            session.commit()
            return str(exc)
        claim = _Claim(row, (event.payload if event else "").encode(), keys)
        session.commit()
    return claim


def _signing_keys(session: Session, row: WebhookDelivery, now: datetime) -> list[str]:
    """The secrets that sign ``row``: its endpoint's, or the tenant's callback secret (and
    the previous one, within the rotation grace)."""
    if row.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, row.endpoint_id)
        if endpoint is None:
            raise LookupError("the webhook was deleted")
        return [secrets.unseal(endpoint.secret_ciphertext)]
    secret = session.scalar(
        select(WebhookSigningSecret).where(WebhookSigningSecret.tenant_id == row.tenant_id)
    )
    if secret is None:
        raise LookupError("the tenant has no webhook signing secret (POST /v1/webhook-secret)")
    keys = [secrets.unseal(secret.ciphertext)]
    if secret.previous_ciphertext and secret.previous_until and secret.previous_until > now:
        keys.append(secrets.unseal(secret.previous_ciphertext))
    return keys


def _post(claim: _Claim, ws: Settings) -> tuple[int | None, str | None, str | None, bool]:
    """(status code, excerpt, error, permanent) of one POST."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",  # the excerpt is read raw, never decompressed
        **signing.headers(claim.keys, claim.id, timestamp, claim.body),
    }
    policy = get_settings().outbound_policy()
    try:
        with (
            guarded_client(policy, timeout=ws.webhook_timeout_s) as client,
            client.stream("POST", claim.url, content=claim.body, headers=headers) as response,
        ):
            return response.status_code, _excerpt(response), None, False
    except OutboundRefused as exc:
        return None, None, f"refused by the outbound policy: {exc}"[:ERROR_CHARS], True
    except httpx.HTTPError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS], False


def _excerpt(response: httpx.Response) -> str | None:
    """At most the first ``EXCERPT_CHARS`` characters of the body (``EXCERPT_BYTES`` read)."""
    data = b""
    for chunk in response.iter_raw(EXCERPT_BYTES):
        data += chunk
        if len(data) >= EXCERPT_BYTES:
            break
    text = data[:EXCERPT_BYTES].decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    return text or None


def _finish(
    delivery_id: str,
    attempts: int | None,
    *,
    failed: bool,
    error: str | None,
    code: int | None,
    excerpt: str | None,
) -> str:
    status = "failed" if failed else "succeeded"
    where = [WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending"]
    if attempts is not None:
        where.append(WebhookDelivery.attempts == attempts)
    with SessionLocal(bind=for_writes(get_engine())) as session:
        session.execute(
            update(WebhookDelivery)
            .where(*where)
            .values(
                status=status,
                finished_at=_now(),
                next_attempt_at=None,
                lease_until=None,
                last_status_code=code,
                last_error=error[:ERROR_CHARS] if error else None,
                response_excerpt=excerpt,
            )
            .execution_options(**_NO_UPDATE)
        )
        session.commit()
    (log.warning if failed else log.info)("webhook delivery %s %s%s", delivery_id, status,
                                          f": {error}" if error else "")  # fmt: skip
    return status


def _send(delivery_id: str, *, countdown: float | None = None) -> None:
    try:
        if countdown:
            celery_app.send_task(
                WEBHOOK_DELIVER,
                kwargs={"delivery_id": delivery_id},
                task_id=uuid.uuid4().hex,
                queue=TASK_QUEUES[WEBHOOK_DELIVER],
                countdown=countdown,
            )
        else:
            send(uuid.uuid4().hex, WEBHOOK_DELIVER, {"delivery_id": delivery_id})
    except Exception:  # noqa: BLE001 - the recovery sweep sends it when due
        log.warning("could not send webhook delivery %s; the sweep will", delivery_id,
                    exc_info=True)  # fmt: skip


def resend_due(
    *, now: datetime | None = None, redispatch_s: float | None = None, limit: int = 500
) -> list[str]:
    """Send the task again for each delivery that is due, held by no attempt, and whose last
    send is ``redispatch_s`` old (or that was never sent): the recovery sweep's part. Several
    sweepers at once: a compare-and-set on ``dispatched_at`` lets one of them send. The
    embedded default's start passes ``redispatch_s=0``: its in-memory broker lost every
    message with the last process."""
    ws = get_settings()
    now = now or _now()
    redispatch_s = ws.webhook_redispatch_s if redispatch_s is None else redispatch_s
    stale = now - timedelta(seconds=redispatch_s)
    sent: list[str] = []
    with SessionLocal() as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.dispatched_at)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now),
                or_(
                    WebhookDelivery.dispatched_at.is_(None), WebhookDelivery.dispatched_at <= stale
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        ).all()
        for delivery_id, dispatched_at in rows:
            unchanged = (
                WebhookDelivery.dispatched_at.is_(None)
                if dispatched_at is None
                else WebhookDelivery.dispatched_at == dispatched_at
            )
            claimed = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, unchanged)
                .values(dispatched_at=now)
                .execution_options(**_NO_UPDATE)
            ).rowcount
            session.commit()
            if claimed:
                _send(delivery_id)
                sent.append(delivery_id)
    return sent
