"""The API process must stay light: importing it never imports torch or the worker code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "workers.engine", "workers.tasks", "workers.celery_app")


def test_importing_the_api_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import service.main\n"
        "app = service.main.create_app()\n"
        "app.openapi()\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}\n"
        f"         or any(m.startswith(h + '.') for h in {HEAVY!r})]\n"
        "print('HEAVY', heavy)\n"
        "assert 'torch' not in sys.modules\n"
        "assert not heavy, heavy\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SIFT_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "SIFT_BLOB_URL": f"file://{tmp_path}/blobs",
        "SIFT_BROKER_URL": "memory://",
        "SIFT_ENV": "development",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout
    assert not (tmp_path / "x.db").exists()  # importing connects to nothing
