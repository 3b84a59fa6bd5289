"""``held_by_broker`` against a real Redis and kombu's own consumer: a message waiting in any
priority list, or taken by a worker and not acknowledged, is held; one popped and never
recorded (a worker killed between its BRPOP and kombu's unacked record) is not."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery

from service.queue import _make_celery_app, held_by_broker
from tests.integration.servers import Servers

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_url(servers: Servers) -> Iterator[str]:
    parts = urlsplit(servers.broker_url)
    url = f"redis://{parts.hostname}:{parts.port}/6"  # a db of its own
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def _send(app: Celery, queue: str = "sift.gpu", priority: int | None = None) -> str:
    task_id = uuid.uuid4().hex
    app.send_task(
        "sift.valuation.featurize_shard",
        kwargs={"valuation_id": "v"},
        task_id=task_id,
        queue=queue,
        priority=priority,
    )
    return task_id


def test_waiting_and_reserved_messages_are_held_a_dropped_one_is_not(broker_url: str) -> None:
    app = _make_celery_app(broker_url)
    sent = [_send(app), _send(app), _send(app, priority=9), _send(app, queue="sift.cpu")]
    with app.connection_for_read() as connection:
        reserved = connection.SimpleQueue("sift.gpu", no_ack=False).get(timeout=5)
        reserved_id = reserved.headers["id"]  # now in kombu's unacked set, not acknowledged
        dropped = json.loads(redis.Redis.from_url(broker_url).rpop("sift.gpu"))["headers"]["id"]
        held = held_by_broker([*sent, "never-sent"], {"sift.gpu", "sift.cpu"}, app=app)
        assert held == set(sent) - {dropped}
        assert reserved_id in held and dropped in sent
        assert held_by_broker(sent, {"sift.gpu"}, app=app) == set(sent) - {dropped, sent[3]}
        reserved.ack()
    assert reserved_id not in (held_by_broker(sent, {"sift.gpu", "sift.cpu"}, app=app) or ())


def test_a_key_prefix_is_followed_and_junk_entries_are_skipped(broker_url: str) -> None:
    app = _make_celery_app(broker_url)
    app.conf.broker_transport_options = {"global_keyprefix": "tenant-a:"}
    task_id = _send(app)
    redis.Redis.from_url(broker_url).lpush("tenant-a:sift.gpu", b"not a celery message")
    assert held_by_broker([task_id], {"sift.gpu"}, app=app) == {task_id}
    assert held_by_broker([task_id], {"sift.gpu"}, app=_make_celery_app(broker_url)) == set()


def test_a_broker_that_is_not_one_redis_cannot_tell() -> None:
    assert held_by_broker(["t"], {"sift.gpu"}, app=_make_celery_app("memory://")) is None
