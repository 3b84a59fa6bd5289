"""Webhooks: job events delivered to URLs, signed per the Standard Webhooks spec.

* ``schemas`` / ``endpoints`` / ``service``: ``/v1/webhooks`` (endpoints and their delivery
  log), ``/v1/webhook-deliveries``, ``/v1/webhook-secret`` (the tenant's callback signing
  secret) and the ``callback_url`` of job-creating requests.
* ``outbox``: the job's status change writes its events and deliveries in the same
  transaction; after the commit each delivery's task is sent (``sift.webhook.deliver``).
* ``signing``: ``whsec_`` secrets and ``v1,<base64 HMAC-SHA256>`` signatures.
* the retry schedule: ``SIFT_WEBHOOK_*`` in ``service.config``.

The worker side is ``workers.tasks.webhooks`` (attempts, backoff, the sweep's resends).
"""
