"""Webhook deliveries: one task per attempt, retried with backoff, at least once.

A delivery row (``webhook_deliveries``, written by ``service.webhooks.outbox`` with the job's
status change) is attempted by ``sift.webhook.deliver``:

1. The attempt *claims* it (compare-and-set: pending, due, no live lease): ``attempts`` + 1 and
   a lease of the timeout plus 30 s, committed before anything is sent. Any number of copies
   of the task may arrive (the outbox's send, a countdown retry, the sweep's resends); one
   claims, the others return. A delivery older than ``retry_for_s`` is failed instead of
   claimed, so nothing (not even an attempt that keeps crashing) resends it past its window.
2. It POSTs the event's stored body, signed per Standard Webhooks (``webhook-id`` is the
   delivery's id on every attempt; a fresh ``webhook-timestamp`` and signature each time)
   through the outbound guard (``workers.outbound``: checked again at connect time against the
   address dialled, so DNS rebinding gains nothing; redirects are never followed). The whole
   attempt (name lookup, connects, sending, the answer's status line and headers) ends within
   ``timeout_s``, well inside the lease: a receiver that trickles its answer cannot outlive it.
3. A 2xx ends it (succeeded). Anything else (another status, a timeout, a refused connection,
   a signing secret this worker cannot open) schedules the next attempt after
   ``retry_base_s * 2**(attempts-1)`` (at most ``retry_max_interval_s``) until ``retry_for_s``
   after the event; then it is failed. A URL the guard refuses (a forbidden address, a
   redirect) fails it at once. Only the status code and a short error are kept: no part of the
   receiver's answer (an allowlisted internal host's answers are no member's to read).

:func:`resend_due` (run by every recovery sweep) sends the task again for each delivery that
is due and in nobody's hands: its send was lost (``task_lost_s`` after it, as for any task: a
busy worker may simply not have reached it yet), its retry is due, or the worker holding it
died (its lease ran out; ``webhook_redispatch_s`` after the last send). So a worker killed
mid-delivery loses nothing; the receiver may see the same ``webhook-id`` twice, which is what
it deduplicates on.
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


class _Unsigned:
    """A claimed delivery with nothing to sign it with: ``permanent`` when there never will
    be (its webhook or the tenant's secret is gone), else the secret could not be opened."""

    def __init__(self, row: WebhookDelivery, error: str, *, permanent: bool) -> None:
        self.id, self.attempts, self.created_at = row.id, row.attempts, row.created_at
        self.error, self.permanent = error, permanent


def attempt(delivery_id: str) -> str | None:
    """One attempt of a delivery, if it is due and nobody holds it; its status afterwards
    (None when there was nothing to do)."""
    ws = get_settings()
    if _give_up_expired(delivery_id, ws):
        return "failed"
    claim = _claim(delivery_id, ws)
    if claim is None:
        return None
    if isinstance(claim, _Unsigned):
        return _failed(claim.id, claim.attempts, claim.created_at, ws, code=None,
                       error=claim.error, permanent=claim.permanent)  # fmt: skip
    code, error, permanent = _post(claim, ws)
    if code is not None and 200 <= code < 300:
        return _finish(claim.id, claim.attempts, failed=False, error=None, code=code)
    if error is None:
        error = f"the receiver answered status {code}"
    return _failed(claim.id, claim.attempts, claim.created_at, ws, code=code, error=error,
                   permanent=permanent)  # fmt: skip


def _failed(
    delivery_id: str,
    attempts: int,
    created_at: datetime,
    ws: Settings,
    *,
    code: int | None,
    error: str,
    permanent: bool,
) -> str:
    """Record a failed attempt: the next one scheduled (lease released), or given up."""
    delay = backoff_s(attempts, ws)
    due = _now() + timedelta(seconds=delay)
    if permanent or (due - created_at).total_seconds() > ws.webhook_retry_for_s:
        if not permanent:
            error = f"{error}; gave up after {attempts} attempts"
        return _finish(delivery_id, attempts, failed=True, error=error, code=code)
    countdown = delay <= ws.webhook_countdown_max_s
    with SessionLocal(bind=for_writes(get_engine())) as session:
        moved = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempts)
            .values(
                status="pending",
                next_attempt_at=due,
                lease_until=None,
                dispatched_at=due if countdown else None,
                last_status_code=code,
                last_error=_text(error),
                response_excerpt=None,
            )
            .execution_options(**_NO_UPDATE)
        ).rowcount
        session.commit()
    if moved and countdown:
        _send(delivery_id, countdown=delay)
    log.info("webhook delivery %s: attempt %d failed (%s); next in %.0f s",
             delivery_id, attempts, error, delay)  # fmt: skip
    return "pending"


def _give_up_expired(delivery_id: str, ws: Settings, now: datetime | None = None) -> bool:
    """Fail the delivery if it is pending, in nobody's hands and older than ``retry_for_s``:
    an attempt that crashes every time (so never records its failure), or a send that no
    worker ever takes up, stops with the window."""
    now = now or _now()
    with SessionLocal(bind=for_writes(get_engine())) as session:
        row = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.created_at <= now - timedelta(seconds=ws.webhook_retry_for_s),
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now),
            )
        ).one_or_none()
        if row is None:
            session.commit()
            return False
        attempts, last_error = row.attempts, row.last_error
        session.commit()
    reason = f"not delivered within {ws.webhook_retry_for_s:g} s; gave up after {attempts} attempts"
    error = f"{last_error}; {reason}" if last_error else reason
    _finish(delivery_id, attempts, failed=True, error=error, code=None, keep_code=True)
    return True


def _claim(delivery_id: str, ws: Settings) -> _Claim | _Unsigned | None:
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
        except LookupError as exc:
            session.commit()
            return _Unsigned(row, str(exc), permanent=True)
        except secrets.SecretUnavailable as exc:
            session.commit()
            log.error("webhook delivery %s: its signing secret cannot be opened on this worker "
                      "(%s); retrying later", delivery_id, exc)  # fmt: skip
            return _Unsigned(row, f"the signing secret cannot be opened: {exc}", permanent=False)
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


def _post(claim: _Claim, ws: Settings) -> tuple[int | None, str | None, bool]:
    """(status code, error, permanent) of one POST; over within ``webhook_timeout_s`` in all.
    The answer's body is never read."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signing.headers(claim.keys, claim.id, timestamp, claim.body),
    }
    policy = get_settings().outbound_policy()
    timeout = ws.webhook_timeout_s
    try:
        with (
            guarded_client(policy, timeout=timeout, total_s=timeout) as client,
            client.stream("POST", claim.url, content=claim.body, headers=headers) as response,
        ):
            return response.status_code, None, False
    except OutboundRefused as exc:
        return None, f"refused by the outbound policy: {exc}", True
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}", False


def _text(error: str | None) -> str | None:
    """``error`` as a column may hold it: at most ``ERROR_CHARS``, without the characters a
    Postgres text refuses (NUL, unpaired surrogates), which would fail every write of it."""
    if not error:
        return None
    error = error.replace("\x00", "\ufffd")
    return error.encode("utf-8", "replace").decode("utf-8")[:ERROR_CHARS]


def _finish(
    delivery_id: str,
    attempts: int | None,
    *,
    failed: bool,
    error: str | None,
    code: int | None,
    keep_code: bool = False,
) -> str:
    status = "failed" if failed else "succeeded"
    where = [WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending"]
    if attempts is not None:
        where.append(WebhookDelivery.attempts == attempts)
    values: dict[str, object] = {
        "status": status,
        "finished_at": _now(),
        "next_attempt_at": None,
        "lease_until": None,
        "last_error": _text(error),
        "response_excerpt": None,
    }
    if not keep_code:
        values["last_status_code"] = code
    with SessionLocal(bind=for_writes(get_engine())) as session:
        session.execute(
            update(WebhookDelivery).where(*where).values(**values).execution_options(**_NO_UPDATE)
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
    *,
    now: datetime | None = None,
    redispatch_s: float | None = None,
    lost_s: float | None = None,
    limit: int = 500,
) -> list[str]:
    """Send the task again for each delivery that is due, held by no attempt, and whose last send is
    old enough (or that was never sent): the recovery sweep's part. Old enough is
    ``redispatch_s`` (``webhook_redispatch_s``) after an attempt that started and died (its
    lease ran out; the resend clears it), ``lost_s`` (``task_lost_s``) for a send no attempt
    took up yet: its message most likely waits for a worker on ``sift.events`` (none running, or
    all busy), and a copy every minute would only pile up there. A delivery past its window
    (``webhook_retry_for_s``) is failed instead of sent: with no events worker at all, the
    queue would otherwise grow by a copy an hour for ever. Several sweepers at once: a
    compare-and-set on ``dispatched_at`` lets one of them send. The embedded default's start
    passes 0 for both: its in-memory broker lost every message with the last process."""
    ws = get_settings()
    now = now or _now()
    redispatch_s = ws.webhook_redispatch_s if redispatch_s is None else redispatch_s
    lost_s = ws.task_lost_s if lost_s is None else lost_s
    died = now - timedelta(seconds=redispatch_s)
    lost = now - timedelta(seconds=lost_s)
    expired = now - timedelta(seconds=ws.webhook_retry_for_s)
    sent: list[str] = []
    with SessionLocal(bind=for_writes(get_engine())) as session:
        rows = session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.dispatched_at,
                (WebhookDelivery.created_at <= expired).label("expired"),
            )
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now),
                or_(
                    WebhookDelivery.dispatched_at.is_(None),
                    WebhookDelivery.lease_until.is_(None) & (WebhookDelivery.dispatched_at <= lost),
                    WebhookDelivery.lease_until.is_not(None)
                    & (WebhookDelivery.dispatched_at <= died),
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        ).all()
        for delivery_id, dispatched_at, past_window in rows:
            if past_window:
                session.commit()  # ends the read; the give-up takes its own write
                _give_up_expired(delivery_id, ws, now)
                continue
            unchanged = (
                WebhookDelivery.dispatched_at.is_(None)
                if dispatched_at is None
                else WebhookDelivery.dispatched_at == dispatched_at
            )
            claimed = session.execute(  # the dead lease goes: resent once, then as a send
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    unchanged,
                    or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now),
                )
                .values(dispatched_at=now, lease_until=None)
                .execution_options(**_NO_UPDATE)
            ).rowcount
            session.commit()
            if claimed:
                _send(delivery_id)
                sent.append(delivery_id)
    return sent
