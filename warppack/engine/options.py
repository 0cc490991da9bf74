"""Validation of the options every layer shares; each rule is written here once.

Errors name the argument, the value and what to pass instead.
"""

from __future__ import annotations

import numbers
from typing import Any, Collection, Optional

import numpy as np

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "INT32_MAX",
    "INT64_MAX",
    "OVERLONG_POLICIES",
    "STRATEGIES",
    "check_choice",
    "check_flag",
    "check_fraction",
    "check_int",
    "check_int32_count",
    "check_max_seqs_per_bin",
    "check_optional_count",
    "check_overlong",
    "check_seed",
    "check_strategy",
    "index_past_int64",
    "is_int",
]

STRATEGIES = {"bfd": 0, "ffd": 1, "online": 2}
OVERLONG_POLICIES = {"error": 0, "truncate": 1, "split": 2}
DEFAULT_BUFFER_SIZE = 1024
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` to Python but never a count here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def index_past_int64(array: np.ndarray) -> Optional[int]:
    """Where an integer array holds a value int64 cannot: the index of its largest value, or None.

    Only uint64 can (numpy's other integer dtypes all fit); the array is read once when nothing is past.
    The bound is a uint64 too: numpy 1.x compares uint64 with a Python int as float64, where 2**63 == 2**63 - 1.
    """
    if array.dtype != np.uint64 or not array.size or array.max() <= np.uint64(INT64_MAX):
        return None
    return int(np.argmax(array))


def check_fraction(value: Any, *, name: str, example: str, closed_above: bool = False) -> float:
    """``value`` as a float in (0, 1), or (0, 1] when ``closed_above``; bools and NaN are refused."""
    real = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if real and (0 < float(value) < 1 or (closed_above and float(value) == 1)):
        return float(value)
    interval = "in (0, 1]" if closed_above else "strictly between 0 and 1"
    raise ValueError(f"{name} must be a fraction {interval}, got {value!r}; pass e.g. {example}")


def check_int(value: Any, *, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None,
              example: Any = None) -> int:
    """``value`` as an int within [minimum, maximum], or TypeError/ValueError naming ``name``."""
    shown = example if example is not None else (minimum if minimum is not None and minimum > 0 else 0)
    wanted = "an int" + (f" >= {minimum}" if minimum is not None else "")
    if not is_int(value):
        raise TypeError(f"{name} must be {wanted}, got {value!r} of type {type(value).__name__}; pass e.g. "
                        f"{name}={shown}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be {wanted}, got {number}; pass e.g. {name}={shown}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {number}; lower {name}")
    return number


def check_int32_count(value: Any, *, name: str = "max_tokens") -> int:
    """A positive count that fits cu_seqlens' int32 (a token budget, a window, a per-bin limit)."""
    if not is_int(value):
        raise TypeError(
            f"{name} must be a positive int, got {value!r} of type {type(value).__name__}; pass e.g. "
            f"{name}=8192"
        )
    number = int(value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {number}; pass a positive count such as {name}=8192")
    if number > INT32_MAX:
        raise ValueError(f"{name}={number} exceeds the int32 range of cu_seqlens (2**31 - 1); lower {name}")
    return number


def check_seed(seed: Any, *, name: str = "seed") -> int:
    """Any int (it is reduced modulo 2**64 where the engine needs it)."""
    if not is_int(seed):
        raise TypeError(f"{name} must be an int, got {seed!r} of type {type(seed).__name__}; pass e.g. {name}=0")
    return int(seed)


def check_choice(value: Any, *, name: str, choices: Collection[str], default: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {sorted(choices)}; the default is {default!r}")
    return value


def check_strategy(strategy: Any) -> str:
    return check_choice(strategy, name="strategy", choices=STRATEGIES, default="bfd")


def check_overlong(overlong: Any, *, allowed: Collection[str] = tuple(OVERLONG_POLICIES)) -> str:
    return check_choice(overlong, name="overlong", choices=allowed, default="error")


def check_flag(value: Any, *, name: str) -> bool:
    """``value`` as a bool, or TypeError naming ``name``: a string such as ``"no"`` must not read as True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}; pass e.g. "
                    f"{name}=False")


def check_optional_count(value: Any, *, name: str) -> Optional[int]:
    """None (not set) or a positive count that fits int32."""
    return None if value is None else check_int32_count(value, name=name)


def check_max_seqs_per_bin(value: Any) -> Optional[int]:
    """None (unlimited) or a positive count that fits int32."""
    if value is None:
        return None
    if not is_int(value):
        raise TypeError(f"max_seqs_per_bin must be a positive int or None (unlimited), got {value!r} of type "
                        f"{type(value).__name__}; pass e.g. max_seqs_per_bin=64")
    if int(value) <= 0:
        raise ValueError(f"max_seqs_per_bin must be > 0 (or None for unlimited), got {int(value)}; pass e.g. "
                         f"max_seqs_per_bin=64")
    return check_int32_count(value, name="max_seqs_per_bin")
