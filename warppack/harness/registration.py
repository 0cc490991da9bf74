"""``--model warppack`` in lm-eval's model registry, without importing lm-eval to put it there.

lm-eval keeps lazy ``"module:Class"`` entries in its model registry. Importing ``warppack.harness``
adds ``warppack`` as one (``warppack.harness.backend:WarpPackLM``) when lm-eval creates its registry:
at once if it already has, else right after lm-eval imports ``lm_eval.api.registry``. So
``import warppack.harness`` imports no lm-eval, and the backend (with lm-eval's Hugging Face
backend, about a second of imports) is imported when lm-eval builds ``--model warppack`` or when
``warppack.harness.WarpPackLM`` is first read.
"""

from __future__ import annotations

from typing import Any

from warppack.import_hooks import call_after_import

__all__ = ["__getattr__", "register"]

_REGISTRY = "lm_eval.api.registry"
_BACKEND = "warppack.harness.backend:WarpPackLM"


def register() -> None:
    """Add ``warppack`` to lm-eval's model registry (lm-eval's own names first) unless it is there."""
    # lm-eval's get_model adds its own names only to an empty registry: add them before ours.
    import lm_eval.models  # noqa: F401
    import lm_eval.api.registry as registry

    model_registry = getattr(registry, "model_registry", None)
    if model_registry is None:  # lm-eval before 0.4.13: a plain dict, which the backend's decorator fills
        import warppack.harness.backend  # noqa: F401
    elif "warppack" not in model_registry:
        model_registry.register("warppack", target=_BACKEND)


def __getattr__(name: str) -> Any:
    if name == "WarpPackLM":
        try:
            from warppack.harness.backend import WarpPackLM
        except ModuleNotFoundError as error:
            if not (error.name or "").startswith("lm_eval"):
                raise
            raise ModuleNotFoundError(f"warppack.harness.WarpPackLM needs lm-eval ({error}); install it with "
                                      "pip install 'warppack[eval]'", name=error.name) from error
        return WarpPackLM
    raise AttributeError(f"module 'warppack.harness' has no attribute {name!r}")


call_after_import(_REGISTRY, lambda _registry: register())
