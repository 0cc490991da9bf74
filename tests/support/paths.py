"""Where things are in the checkout, for tests that read files or start scripts."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
DIST_SCRIPTS = TESTS / "support" / "dist_scripts"
