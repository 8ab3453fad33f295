"""Shared fixtures: where ../shared is, the tiktoken cache, and generated corpora.

Tests that need the real corpora in ``../shared/corpora`` use the ``corpora`` fixture, which skips
cleanly when the folder is absent; everything else runs on small generated text.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()

# tiktoken cannot download here; use the checked-in-beside cache when the caller did not set one.
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken-cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken-cache")


def pytest_configure(config: pytest.Config) -> None:
    # under pytest-xdist each worker is one of `nproc` processes: one intra-op thread each, so the
    # in-process torch tests do not oversubscribe the cores the other workers (and their children) use
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def corpora() -> Path:
    """``../shared/corpora``; skips the test when it is not there."""
    path = SHARED / "corpora"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real-corpus test)")
    return path


@pytest.fixture(scope="session")
def owt_sample(corpora: Path) -> Path:
    path = corpora / "owt-sample"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
