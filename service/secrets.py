"""Client-supplied secrets at rest: sealed with ``SIFT_SECRET_KEY`` (Fernet: AES-128-CBC with
an HMAC-SHA256 tag), opened only by the worker that sends them.

What a client gives for an outbound call (an http_judge's headers, a tenant secret such as an
assist endpoint's API key) is write-only: the API stores the sealed token and returns names,
never values. Production refuses to start without a key; the embedded default creates one in
``settings.secret_key_file`` the first time it needs it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from service.config import Settings, get_settings

REDACTED = "<redacted>"


class SecretUnavailable(RuntimeError):
    """A sealed value cannot be opened (another key, or a tampered token)."""


def check_key(key: str) -> None:
    """Refuse a key that is not a Fernet key (so a placeholder cannot slip into production)."""
    try:
        Fernet(key.encode())
    except (ValueError, TypeError) as e:
        raise ValueError(
            "SIFT_SECRET_KEY must be a Fernet key (urlsafe base64 of 32 random bytes); "
            "generate one with `sift secret-key`"
        ) from e


def new_key() -> str:
    return Fernet.generate_key().decode()


def _key(settings: Settings) -> str:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path = Path(settings.secret_key_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key())
    key = path.read_text().strip()
    check_key(key)
    return key


@lru_cache(maxsize=4)
def _fernet(key: str) -> Fernet:
    return Fernet(key.encode())


def seal(value: str, settings: Settings | None = None) -> str:
    return _fernet(_key(settings or get_settings())).encrypt(value.encode()).decode()


def unseal(token: str, settings: Settings | None = None) -> str:
    try:
        return _fernet(_key(settings or get_settings())).decrypt(token.encode()).decode()
    except InvalidToken as e:
        raise SecretUnavailable(
            "a stored secret cannot be opened with this SIFT_SECRET_KEY (was the key changed?)"
        ) from e
