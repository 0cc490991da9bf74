"""The on-disk cache of calibrated token budgets, keyed by everything that changes the answer.

A key is a plain JSON-able dict (model config and parameter counts, dtypes and mixed precision,
device name and total memory, world size, gradient checkpointing, optimizer class and its
memory-relevant flags, library versions, attention backend, the search settings); its SHA-256 names
the file. Each file also stores the key itself, so ``cat`` shows why an entry exists, and a hash
collision can never return another configuration's budget.

The folder is ``$WARPPACK_CACHE_DIR``, else ``$XDG_CACHE_HOME/warppack``, else ``~/.cache/warppack``,
then ``calibration/``. Deleting it is always safe. An entry is read as untrusted input: a corrupt
one is measured again (with a warning naming the file and the fault), never trusted, never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch

from warppack.engine.options import INT32_MAX, is_int

__all__ = ["CacheDir", "calibration_key", "default_cache_dir", "key_digest", "load_budget", "store_budget"]

#: A cache folder (None: :func:`default_cache_dir`).
CacheDir = Union[str, "os.PathLike[str]", None]
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


def _path(key: Mapping[str, Any], directory: CacheDir) -> Path:
    return Path(directory or default_cache_dir()) / f"{key_digest(key)[:32]}.json"


def _canonical(key: Mapping[str, Any]) -> Any:
    """``key`` as it reads back from JSON (tuples become lists, other objects their ``str``)."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def load_budget(key: Mapping[str, Any], directory: CacheDir = None, *, minimum: int = 1,
                maximum: int = INT32_MAX, multiple: int = 1) -> Optional[int]:
    """The cached budget for ``key``, or None: no entry, or one that cannot be trusted.

    The file is untrusted input: an entry that is unreadable, not a JSON object, filed under another
    key, or whose ``max_tokens`` is not an int in ``[minimum, maximum]`` and a multiple of
    ``multiple`` (what the calibration could have returned) is ignored with a warning naming the file
    and the fault; the budget is then measured again and the entry rewritten.
    """
    path = _path(key, directory)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        fault: Optional[str] = f"it cannot be read ({exc})"
    else:
        fault, budget = _entry_fault(text, _canonical(key), minimum=minimum, maximum=maximum, multiple=multiple)
        if fault is None:
            return budget
    warnings.warn(f"warppack: ignoring the calibration cache entry {path}: {fault}; measuring the token budget "
                  f"again (the entry is rewritten afterwards)", RuntimeWarning, stacklevel=2)
    return None


def _entry_fault(text: str, key: Any, *, minimum: int, maximum: int, multiple: int) -> Tuple[Optional[str], int]:
    """(what is wrong with a cache entry, each field type- and range-checked, or None; its budget)."""
    try:
        entry = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"it is not valid JSON ({exc})", 0
    if not isinstance(entry, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(entry), "a number")
        return f"it holds {kind} where a JSON object belongs", 0
    if entry.get("key") != key:
        return "its stored key is not the configuration it is filed under (edited, or copied from another entry)", 0
    budget: Any = entry.get("max_tokens")
    if not is_int(budget):
        return f"max_tokens is {budget!r}, not an int", 0
    if not minimum <= budget <= maximum or budget % multiple:
        return (f"max_tokens={budget} is not a budget this calibration can return (a multiple of {multiple} "
                f"from {minimum} to {maximum})"), 0
    probes = entry.get("probes", [])
    if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
        return f"probes is {_short(probes)}, not a list of probe records", 0
    seconds = entry.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        return f"seconds is {seconds!r}, not a duration", 0
    return None, int(budget)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:55] + " ..."


def store_budget(key: Mapping[str, Any], max_tokens: int, directory: CacheDir = None, *,
                 probes: Sequence[Mapping[str, Any]] = (), seconds: float = 0.0) -> Optional[Path]:
    """Write the budget atomically (several ranks may write the same entry); None if not writable.

    A failed write (full disk, read-only folder) warns and leaves no temporary file behind: the
    training run goes on with the budget it measured.
    """
    path = _path(key, directory)
    entry = {"max_tokens": int(max_tokens), "key": _canonical(key), "probes": [dict(p) for p in probes],
             "seconds": float(seconds)}
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"warppack: could not write the calibration cache entry {path} ({exc}); the budget is "
                      f"measured again next time", RuntimeWarning, stacklevel=2)
        return None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path
