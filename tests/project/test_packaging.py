"""Building from source: what an environment without a new enough setuptools is told."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import setuptools

REPO = Path(__file__).resolve().parents[2]


def test_setup_py_names_the_setuptools_it_needs(monkeypatch):
    # pyproject.toml's PEP 639 license needs setuptools >= 77; older ones fail with a schema error
    # that does not say so (seen with `pip install --no-build-isolation` in a fresh venv).
    monkeypatch.setattr(setuptools, "__version__", "65.5.0")
    with pytest.raises(SystemExit, match=r"setuptools>=77 .*65\.5\.0.*pip install -U"):
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
