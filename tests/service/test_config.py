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


def test_production_refuses_the_in_process_broker() -> None:
    with pytest.raises(ValidationError, match="memory://"):
        Settings(env="production", broker_url="memory://")
    Settings(env="production", broker_url="redis://localhost:6379/0")


def test_postgres_urls_use_psycopg3() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert normalize_database_url(url).drivername == "postgresql+psycopg"
    assert normalize_database_url("sqlite:///x.db").drivername == "sqlite"
