"""Module attributes of ``warppack`` that import transformers, resolved on first access (PEP 562).

``import warppack`` stays cheap and works without transformers; ``warppack.WarpPackCallback`` and
``warppack.pack_trainer`` import the Trainer integration when they are first asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__getattr__"]


def __getattr__(name: str) -> Any:
    if name == "WarpPackCallback":
        from warppack.hf_trainer.callback import WarpPackCallback

        return WarpPackCallback
    if name == "pack_trainer":
        from warppack.hf_trainer.trainer import pack_trainer

        return pack_trainer
    raise AttributeError(f"module 'warppack' has no attribute {name!r}")
