"""call_after_import: callbacks run once, right after the named module's body, without importing it."""

from __future__ import annotations

import sys
import uuid

import pytest

from warppack.import_hooks import call_after_import


@pytest.fixture
def module_name(tmp_path, monkeypatch):
    name = f"awaited_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_callbacks_wait_for_the_import_and_run_once_after_the_body(module_name):
    seen = []
    call_after_import(module_name, lambda module: seen.append(("first", module.VALUE)))
    call_after_import(module_name, lambda module: seen.append(("second", module.VALUE)))
    assert module_name not in sys.modules and seen == []  # nothing imported on our side
    __import__(module_name)
    assert seen == [("first", 42), ("second", 42)]
    sys.modules.pop(module_name)
    __import__(module_name)  # a later import of the same name is the user's own business
    assert len(seen) == 2


def test_an_imported_module_is_called_back_at_once(module_name):
    module = __import__(module_name)
    seen = []
    call_after_import(module_name, seen.append)
    assert seen == [module]


def test_the_finder_forgets_a_name_once_it_is_imported(module_name):
    call_after_import(module_name, lambda module: None)
    finders = [f for f in sys.meta_path if type(f).__module__ == "warppack.import_hooks"]
    assert len(finders) == 1 and module_name in finders[0].callbacks
    __import__(module_name)
    assert all(module_name not in f.callbacks for f in sys.meta_path if type(f).__module__ == "warppack.import_hooks")
