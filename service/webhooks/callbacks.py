"""What a job-creating endpoint needs for its request's ``callback_url``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from service.config import Settings, get_settings
from service.webhooks.service import attach_callback

SettingsDep = Annotated[Settings, Depends(get_settings)]

__all__ = ["SettingsDep", "attach_callback"]
