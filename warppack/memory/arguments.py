"""The arguments of the calibrator: one signature for both entry points, and the checks no other layer shares."""

from __future__ import annotations

import inspect
from os import PathLike
from typing import Any, Callable, Mapping, ParamSpec

import torch

from warppack.batch.collator import PackedCollator
from warppack.memory.device import DeviceMemory

__all__ = ["LossFn", "check_objects", "same_arguments"]

P = ParamSpec("P")
#: ``loss_fn(model, batch) -> loss`` of a training step.
LossFn = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]


def same_arguments(source: Callable[P, Any]) -> Callable[[Callable[..., int]], Callable[P, int]]:
    """Give the decorated function the parameters of ``source``, for ``inspect.signature``, ``help()`` and mypy.

    The parameters are written once (on ``source``); the decorated function forwards them.
    """

    def decorate(function: Callable[..., int]) -> Callable[P, int]:
        returns = inspect.signature(function).return_annotation
        setattr(function, "__signature__", inspect.signature(source).replace(return_annotation=returns))
        return function

    return decorate


def check_objects(*, model: Any, optimizer: Any, collator: Any, loss_fn: Any, cache_dir: Any, memory: Any) -> None:
    """TypeError naming the first argument that is not the kind of object calibration needs."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps one
    checks = [
        ("model", model, isinstance(model, torch.nn.Module), "a torch.nn.Module", "the model you will train"),
        ("optimizer", optimizer, optimizer is None or (hasattr(inner, "param_groups") and hasattr(inner, "state")),
         "a torch.optim.Optimizer or None", "the run's optimizer"),
        ("collator", collator, collator is None or isinstance(collator, PackedCollator),
         "a warppack.PackedCollator or None", "the run's collator"),
        ("loss_fn", loss_fn, loss_fn is None or callable(loss_fn), "a function (model, batch) -> loss, or None",
         "loss_fn=None"),
        ("cache_dir", cache_dir, cache_dir is None or isinstance(cache_dir, (str, PathLike)),
         "a folder path or None", "cache_dir=None"),
        ("memory", memory, memory is None or isinstance(memory, DeviceMemory),
         "a warppack.memory.device.DeviceMemory or None", "memory=None (the CUDA device)"),
    ]
    for name, value, ok, wanted, example in checks:
        if not ok:
            raise TypeError(f"{name} must be {wanted}, got an object of type {type(value).__name__}; pass {example}")
