"""What the two loaders share about their state: fixed settings, the stale-pass guard, saved-state checks.

``PackedBatchSampler`` and ``PackedIterableDataset`` both fix their options at construction (the
plan, ``len()`` and saved states depend on them), both refuse to go on with a pass that
``set_epoch()``/``load_state_dict()`` made stale, and both refuse a saved state whose options differ
from their own. Each of those rules lives here once.
"""

from __future__ import annotations

import hashlib
from typing import (
    Any,
    Dict,
    Generic,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    TypeVar,
    overload,
)

import numpy as np

from warppack.engine.options import check_int

__all__ = ["Fixed", "Generation", "check_epoch", "check_saved_options", "lengths_fingerprint"]

T = TypeVar("T")


class Fixed(Generic[T]):
    """A constructor option, read from the owner's frozen ``_config``; assigning to it raises.

    The options live in a frozen dataclass; this exposes each one as a read-only attribute of the
    loader with an error that says what to do instead (a plain property would only say "no setter").
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: Optional[type] = None) -> "Fixed[T]": ...

    @overload
    def __get__(self, obj: object, objtype: Optional[type] = None) -> T: ...

    def __get__(self, obj: Optional[object], objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, "_config"), self.name)

    def __set__(self, obj: object, value: Any) -> NoReturn:
        owner = type(obj).__name__
        raise AttributeError(
            f"{owner}.{self.name} is fixed at construction (the batches, len() and saved states depend on "
            f"it); build a new {owner} with {self.name}={value!r}"
        )


class Generation:
    """Counts reconfigurations (``set_epoch``, ``load_state_dict``) so that a pass can tell it is stale.

    A pass records the generation it started in and checks it before every batch: a pass that went on
    after a reconfiguration would hand out batches of two epochs or resume points.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.number = 0
        self.change = ""  # what the last reconfiguration was, for the error message

    def advance(self, change: str) -> None:
        self.number += 1
        self.change = change

    def check(self, seen: int, *, epoch: int) -> None:
        """Raise unless generation ``seen`` (when the pass over ``epoch`` started) is still the current one."""
        if seen != self.number:
            raise RuntimeError(
                f"{self.owner} was reconfigured ({self.change}) while this iteration over epoch {epoch} was "
                f"running; continuing would mix two epochs or resume points. Call set_epoch()/load_state_dict() "
                f"between passes and start a new pass over the DataLoader"
            )


def check_epoch(epoch: Any) -> int:
    """``epoch`` as an int, or ValueError naming it."""
    return check_int(epoch, name="epoch", minimum=0)


def lengths_fingerprint(lengths: np.ndarray) -> str:
    """A 128-bit hash of the lengths: a saved state records which data it was planned over."""
    data = np.ascontiguousarray(lengths, dtype=np.int64)
    return hashlib.blake2b(data.data.cast("B"), digest_size=16).hexdigest()


def check_saved_options(
    state: Any,
    *,
    expected_format: str,
    options: Mapping[str, Any],
    checked: Sequence[str],
    owner: str,
    noun: str,
    absent_ok: bool,
) -> Dict[str, Any]:
    """``state``, if it is an ``expected_format`` state whose ``checked`` fields equal ``options``; else ValueError.

    ``absent_ok``: a field missing from the state is not compared (states of older versions lack
    some); otherwise a missing field counts as saved ``None``. The error lists every mismatch.
    """
    if not isinstance(state, dict) or state.get("format") != expected_format:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a {owner} state (format {got!r}, expected {expected_format!r})")
    wrong = [
        f"{k}: saved {state.get(k)!r}, this {noun} {options[k]!r}"
        for k in checked
        if (k in state or not absent_ok) and state.get(k) != options[k]
    ]
    if wrong:
        raise ValueError(
            f"this state was saved by a {owner} over other data or options, so resuming would not continue "
            f"where it stopped; build the {owner} with the saved values or start without the state. "
            f"Mismatched fields: " + "; ".join(wrong)
        )
    return state
