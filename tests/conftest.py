"""Shared fixtures: where the real length data lives; no test leaks accelerate's process-wide state."""

import sys
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


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one AcceleratorState per process: reset it so each test builds its own."""
    yield
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct ``(model, tokenizer)``, loaded once per run (tests/support/smollm2.py).

    Tests that switch its attention implementation switch it back to ``"warppack"``.
    """
    from support.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    yield model, tokenizer
