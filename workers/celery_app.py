"""The worker process's Celery app: the API's app (``service.queue``) plus the task modules.

Production runs (as ``sift worker``, see docker-compose.yml) GPU workers on the model queues
and one small worker on the events queue, so a webhook never waits behind a long job::

    sift worker --queues sift.gpu,sift.cpu
    sift worker --queues sift.events

The embedded default (``sift serve``) runs the same app in one thread of the API process, on
all three queues.
"""

from __future__ import annotations

from celery.signals import worker_ready

from service.queue import celery_app
from workers import observability  # noqa: F401 - metrics and log context on Celery signals
from workers.contracts import CPU_QUEUE, EVENTS_QUEUE, GPU_QUEUE

celery_app.conf.update(
    include=[
        "workers.tasks.valuation",
        "workers.tasks.study",
        "workers.tasks.score_set",
        "workers.tasks.curation",
        "workers.tasks.evaluation",
        "workers.tasks.webhooks",
    ]
)
celery_app.loader.import_default_modules()


@worker_ready.connect
def _start_recovery_sweep(**_: object) -> None:
    """Every worker process repairs what dead workers and lost messages left (its own thread)."""
    from workers.tasks.recovery import start_sweeper

    start_sweeper()


QUEUES = (GPU_QUEUE, CPU_QUEUE, EVENTS_QUEUE)


app = celery_app

__all__ = ["QUEUES", "app", "celery_app"]
