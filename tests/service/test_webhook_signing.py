"""Standard Webhooks signatures: the spec's published vectors and its reference library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.webhooks import signing

# The vector of standard-webhooks' own libraries (libraries/python/tests/test_webhooks.py,
# test_sign_function, and the same in every other language's tests).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
WRONG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="  # their invalid-signature case


def test_the_published_vector() -> None:
    assert signing.sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE
    # the secret without its prefix is the same key
    assert signing.sign(SECRET.removeprefix("whsec_"), MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE
    assert signing.sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD) != WRONG
    assert signing.sign(SECRET, MSG_ID, TIMESTAMP + 1, PAYLOAD) != SIGNATURE
    assert signing.sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD + b" ") != SIGNATURE


def test_the_reference_library_signs_the_same() -> None:
    when = datetime.fromtimestamp(TIMESTAMP, tz=UTC)
    assert Webhook(SECRET).sign(MSG_ID, when, PAYLOAD.decode()) == SIGNATURE


def test_headers_verify_with_the_reference_library() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = b'{"type":"job.succeeded","data":{"job_id":"j"}}'
    headers = signing.headers([secret], "d1", int(time.time()), body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert Webhook(secret).verify(body, headers) == {
        "type": "job.succeeded",
        "data": {"job_id": "j"},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_a_rotated_secret_signs_twice_and_either_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    body = b"{}"
    headers = signing.headers([new, old], "d2", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers)


def test_secrets_must_be_base64() -> None:
    with pytest.raises(ValueError):
        signing.sign("whsec_not base64!", MSG_ID, TIMESTAMP, PAYLOAD)
    with pytest.raises(ValueError):
        signing.sign("whsec_", MSG_ID, TIMESTAMP, PAYLOAD)
