"""Where things are in the checkout, and the benchmarks' shared package for tests that check it."""

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
BENCHMARKS = REPO / "benchmarks"
DIST_SCRIPTS = TESTS / "support" / "dist_scripts"


def benchlib(submodule: str) -> ModuleType:
    """``benchlib.<submodule>``: the benchmarks' shared package, loaded from benchmarks/benchlib by path."""
    if "benchlib" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "benchlib", BENCHMARKS / "benchlib" / "__init__.py",
            submodule_search_locations=[str(BENCHMARKS / "benchlib")])
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchlib"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"benchlib.{submodule}")
