"""Sift's REST service: FastAPI endpoints, the database, blob storage and the task queue.

Nothing under ``service`` may import torch (or transformers, peft, ``workers.engine``,
``workers.tasks``): the API stays light and sends work to the workers by task name.
``workers.contracts`` is the only module it imports from ``workers``.
"""
