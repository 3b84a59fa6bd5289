"""Standard Webhooks signatures (https://www.standardwebhooks.com, symmetric ``v1``), made by
the spec's own library (``standardwebhooks``).

A secret is ``whsec_`` + base64 of random bytes; a message is signed as ``v1,`` +
base64(HMAC-SHA256(secret bytes, "{webhook-id}.{webhook-timestamp}.{body}")). Several
signatures (a rotated secret's grace period) are separated by spaces in ``webhook-signature``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

from standardwebhooks import Webhook

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message (``body``: the JSON sent, UTF-8)."""
    raw = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if not key:
        raise ValueError("a webhook secret may not be empty")
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return Webhook(key).sign(msg_id, when, body.decode())


def headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, one signature per secret."""
    signatures = " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }
