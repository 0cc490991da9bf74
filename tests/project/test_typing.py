"""The package is mypy-clean: ``mypy`` from the repository root (config: mypy.ini) finds no error.

warppack ships ``py.typed``, so its annotations are part of the API that users' type checkers read;
an annotation that lies is a bug like any other.
"""

from __future__ import annotations

import collections
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_mypy_reports_no_errors():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install -e '.[test]' (or pip install mypy)")
    assert (REPO / "mypy.ini").is_file(), f"no mypy.ini in {REPO}: the gate checks the package as configured there"
    # The config file is named explicitly: a pyproject.toml [tool.mypy] section must not silently win.
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-color-output", "--no-error-summary"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    errors = [line for line in done.stdout.splitlines() if re.search(r":\d+: error:", line)]
    if done.returncode != 0 and not errors:  # mypy itself failed (bad config, crash): show what it said
        pytest.fail(f"mypy exited {done.returncode} without reporting errors:\n{done.stdout}\n{done.stderr}")
    per_file = collections.Counter(line.split(":", 1)[0] for line in errors)
    summary = ", ".join(f"{path} {count}" for path, count in per_file.most_common())
    shown = "\n".join(errors[:50]) + ("\n..." if len(errors) > 50 else "")
    assert not errors, f"mypy found {len(errors)} errors ({summary}); run `mypy` in {REPO}:\n{shown}"
    assert done.returncode == 0, done.stdout + done.stderr
