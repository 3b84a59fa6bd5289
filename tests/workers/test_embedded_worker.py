"""The embedded default's two worker threads (``service.cli.embedded_worker``): the model queues
and ``sift.events``, each consuming only its own, also after a consumer restart."""

from __future__ import annotations

import pytest

from service.cli import embedded_worker
from workers.celery_app import celery_app
from workers.contracts import CPU_QUEUE, EVENTS_QUEUE, GPU_QUEUE

pytestmark = pytest.mark.usefixtures("migrated")


def _consumed(worker_app: object) -> set[str]:
    return set(worker_app.amqp.queues.consume_from)  # type: ignore[attr-defined]


def test_each_embedded_worker_keeps_its_own_queues() -> None:
    """Two workers of one app would share ``app.amqp.queues``: the second start would leave the
    model worker's next consumer (after a broker reconnect) on ``sift.events`` alone."""
    with embedded_worker():
        assert _consumed(celery_app) == {GPU_QUEUE, CPU_QUEUE}
        from celery import current_app

        assert current_app._get_current_object() is celery_app  # the default app is ours
        events = [a for a in _started_apps() if a is not celery_app]
        assert len(events) == 1 and _consumed(events[0]) == {EVENTS_QUEUE}
        assert "sift.webhook.deliver" in events[0].tasks


def _started_apps() -> list[object]:
    """The apps of the running workers (celery keeps every app made in ``celery._state``)."""
    from celery import _state

    return [app for app in _state._get_active_apps() if app.amqp.queues.consume_from]
