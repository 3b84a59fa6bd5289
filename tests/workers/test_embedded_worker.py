"""The embedded default's two worker threads (``service.cli.embedded_worker``): the model queues
and ``sift.events``, each consuming only its own, also after a consumer restart."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, current_app

from service.cli import embedded_worker
from workers import celery_app as worker_module
from workers.celery_app import celery_app
from workers.contracts import CPU_QUEUE, EVENTS_QUEUE, GPU_QUEUE

pytestmark = pytest.mark.usefixtures("migrated")


def _consumed(app: Any) -> set[str]:
    return set(app.amqp.queues.consume_from)


def test_each_embedded_worker_keeps_its_own_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers of one app would share ``app.amqp.queues``: the second start would leave the
    model worker's next consumer (after a broker reconnect) on ``sift.events`` alone."""
    made: list[Celery] = []

    def recording_events_app() -> Celery:
        made.append(events_app())
        return made[-1]

    events_app = worker_module.events_app
    monkeypatch.setattr(worker_module, "events_app", recording_events_app)
    with embedded_worker():
        assert _consumed(celery_app) == {GPU_QUEUE, CPU_QUEUE}
        assert current_app._get_current_object() is celery_app  # the default app is ours
        [events] = made
        assert events is not celery_app and _consumed(events) == {EVENTS_QUEUE}
        assert "sift.webhook.deliver" in events.tasks
