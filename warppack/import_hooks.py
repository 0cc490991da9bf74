"""Run code right after a module finishes importing, without importing it.

``import warppack`` registers its attention with transformers and its backend with lm-eval. Both
cost seconds to import and may never be used, so warppack waits for the user's code to import them:
a finder at the front of ``sys.meta_path`` wraps the named module's loader once, runs the callback
after the module's body, and steps aside.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ["call_after_import"]

Callback = Callable[[ModuleType], None]


def call_after_import(name: str, callback: Callback) -> None:
    """``callback(module)`` now if ``name`` is imported, else right after it is (once)."""
    if name in sys.modules:
        callback(sys.modules[name])
        return
    finder = next((f for f in sys.meta_path if isinstance(f, _AfterImport)), None)
    if finder is None:
        finder = _AfterImport()
        sys.meta_path.insert(0, finder)
    finder.callbacks.setdefault(name, []).append(callback)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds the awaited modules as the other finders do, with a loader that calls back after them."""

    def __init__(self) -> None:
        self.callbacks: Dict[str, list] = {}

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None) -> Any:
        callbacks = self.callbacks.pop(fullname, None)
        if callbacks is None:
            return None
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the real finders: this one no longer awaits the name
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenCall(spec.loader, callbacks)
        return spec


class _ThenCall(importlib.abc.Loader):
    """The module's own loader, then the callbacks."""

    def __init__(self, loader: importlib.abc.Loader, callbacks: list) -> None:
        self.loader, self.callbacks = loader, callbacks

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for inspect and linecache
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Optional[ModuleType]:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        for callback in self.callbacks:
            callback(module)
