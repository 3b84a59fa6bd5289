"""Settings every test process shares, set before anything reads them."""

from __future__ import annotations

import os

pytest_plugins = ["tests.real_models"]  # session fixtures of the real (GGUF) model

TEST_SECRET_KEY = "4Dk0d5qCqBH3o3pHqW2d3a1yRzGZbq8q3v9o9r2Yb0Y="
"""A fixed Fernet key for tests (CI's .ci/env.sh exports the same); never a production key."""

# Sealing and opening client secrets must agree across the app, the worker code and the tests;
# without it the development fallback would write a key file into the working directory.
os.environ.setdefault("SIFT_SECRET_KEY", TEST_SECRET_KEY)
