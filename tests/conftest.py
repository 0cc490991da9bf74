"""Shared fixtures: where the real length data lives."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real length data); skip if it is not there."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real length data not found at {path}")
    return path
