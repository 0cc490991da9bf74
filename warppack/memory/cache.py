"""The on-disk cache of calibrated token budgets, keyed by everything that changes the answer.

A key is a plain JSON-able dict (model config and parameter counts, dtypes and mixed precision,
device name and total memory, world size, gradient checkpointing, optimizer class and its
memory-relevant flags, library versions, attention backend, the search settings); its SHA-256 names
the file. Each file also stores the key itself, so ``cat`` shows why an entry exists, and a hash
collision can never return another configuration's budget.

The folder is ``$WARPPACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/warppack``, else ``~/.cache/warppack``,
then ``calibration/``. Deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

__all__ = ["default_cache_dir", "calibration_key", "key_digest", "load_budget", "store_budget"]

_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "name_or_path")


def default_cache_dir() -> Path:
    root = os.environ.get("WARPPACK_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "warppack")
    return Path(root) / "calibration"


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _model_identity(model: torch.nn.Module) -> dict:
    params = list(model.parameters())
    config = getattr(model, "config", None)
    described: Any
    if config is not None and hasattr(config, "to_dict"):
        described = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    else:  # a plain nn.Module: its parameter shapes are its architecture as far as memory goes
        described = [(name, list(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
    text = json.dumps(described, sort_keys=True, default=str)
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "gradient_checkpointing": _checkpointing(model),
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }


def _checkpointing(model: torch.nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers renamed it
        if hasattr(type(model), name) or name in vars(model):
            return bool(getattr(model, name))
    return False


def _optimizer_identity(optimizer: Any) -> Optional[dict]:
    if optimizer is None:
        return None
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps one
    defaults = getattr(inner, "defaults", {}) or {}
    # Flags change memory (amsgrad adds a buffer, foreach/fused change temporaries); learning rates do not.
    flags = {k: v for k, v in defaults.items() if isinstance(v, (bool, str)) or v is None}
    return {"class": f"{type(inner).__module__}.{type(inner).__qualname__}", "flags": flags}


def calibration_key(model: torch.nn.Module, *, optimizer: Any, device: Mapping[str, Any],
                    world_size: int, mixed_precision: Optional[str], settings: Mapping[str, Any]) -> dict:
    """Everything that changes a calibrated budget, as a JSON-able dict."""
    from warppack._version import __version__
    from warppack.attention.dispatch import forced_attention_backend

    return {
        "model": _model_identity(model),
        "optimizer": _optimizer_identity(optimizer),
        "mixed_precision": mixed_precision or "no",
        "device": dict(device),
        "world_size": int(world_size),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "accelerate": _version("accelerate"), "warppack": __version__},
        "attention": {"forced_backend": forced_attention_backend(),
                      "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None},
        "settings": dict(settings),
    }


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _path(key: Mapping[str, Any], directory: Union[str, Path, None]) -> Path:
    return Path(directory or default_cache_dir()) / f"{key_digest(key)[:32]}.json"


def load_budget(key: Mapping[str, Any], directory: Union[str, Path, None] = None) -> Optional[int]:
    """The cached budget for ``key``, or None (missing, unreadable or stored under another key)."""
    path = _path(key, directory)
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    canonical = json.loads(json.dumps(key, sort_keys=True, default=str))
    if entry.get("key") != canonical or not isinstance(entry.get("max_tokens"), int):
        return None
    return entry["max_tokens"]


def store_budget(key: Mapping[str, Any], max_tokens: int, directory: Union[str, Path, None] = None,
                 **details: Any) -> Optional[Path]:
    """Write the budget atomically (several ranks may write the same entry); None if not writable."""
    path = _path(key, directory)
    entry = {"max_tokens": int(max_tokens), "key": json.loads(json.dumps(key, sort_keys=True, default=str)),
             **details}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)
    except OSError:
        return None  # a read-only home must not fail a training run; the budget is still returned
    return path
