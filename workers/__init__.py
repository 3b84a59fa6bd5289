"""Sift workers: the pure compute engine (``workers.engine``) and thin Celery glue
(``workers.tasks``)."""
