from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.db.session import normalize_database_url


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFT_PAGE_SIZE_MAX", "7")
    monkeypatch.setenv("SIFT_CHECK_MODEL_PATHS", "false")
    monkeypatch.setenv("SIFT_ENV", "development")
    settings = Settings()
    assert settings.page_size_max == 7 and settings.check_model_paths is False


KEY = "4Dk0d5qCqBH3o3pHqW2d3a1yRzGZbq8q3v9o9r2Yb0Y="


def test_production_refuses_the_in_process_broker() -> None:
    with pytest.raises(ValidationError, match="memory://"):
        Settings(env="production", broker_url="memory://", secret_key=KEY)
    Settings(env="production", broker_url="redis://localhost:6379/0", secret_key=KEY)


def test_production_refuses_to_start_without_a_real_secret_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SIFT_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="SIFT_SECRET_KEY is required"):
        Settings(env="production", broker_url="redis://localhost:6379/0")
    for placeholder in ("change-me", "", "x" * 44):
        with pytest.raises(ValidationError, match="must be a Fernet key"):
            Settings(env="production", broker_url="redis://x:1/0", secret_key=placeholder)
    Settings(env="development")  # development makes its own key when it needs one


def test_postgres_urls_use_psycopg3() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert normalize_database_url(url).drivername == "postgresql+psycopg"
    assert normalize_database_url("sqlite:///x.db").drivername == "sqlite"
