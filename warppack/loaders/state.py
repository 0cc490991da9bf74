"""What the two loaders share about their state: fixed settings, the stale-pass guard, saved-state checks.

``PackedBatchSampler`` and ``PackedIterableDataset`` both fix their options at construction (the
plan, ``len()`` and saved states depend on them), both refuse to go on with a pass that a newer
pass or ``set_epoch()``/``load_state_dict()`` made stale, both refuse a second thread inside one
pass, and both read saved states as untrusted input: a state whose options differ from their own,
or whose fields are of the wrong type or out of range, is refused with the field named. Each of
those rules lives here once.
"""

from __future__ import annotations

import hashlib
import threading
from types import TracebackType
from typing import (
    Any,
    Dict,
    Generic,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Type,
    TypeVar,
    overload,
)

import numpy as np

from warppack.engine.options import INT32_MAX, check_int, is_int

__all__ = [
    "EPOCH_MAX",
    "Fixed",
    "Generation",
    "OneThread",
    "SavedFields",
    "check_epoch",
    "check_positive_lengths",
    "check_saved_options",
    "lengths_fingerprint",
]

T = TypeVar("T")

#: Epochs are counted in 31 bits (a persistent worker reads the epoch from one shared int64).
EPOCH_MAX = INT32_MAX


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
    """Counts new passes and reconfigurations (``set_epoch``, ``load_state_dict``) so that a pass can tell it is stale.

    A pass records the generation it started in and checks it before every batch: a pass that went on
    after a reconfiguration would hand out batches of two epochs or resume points, and two passes
    over one object would each move the position that ``state_dict()`` saves.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.number = 0
        self.change = ""  # what the last advance was, for the error message
        self.new_pass = False

    def advance(self, change: str, *, new_pass: bool = False) -> None:
        self.number += 1
        self.change = change
        self.new_pass = new_pass

    def check(self, seen: int, *, epoch: int) -> None:
        """Raise unless generation ``seen`` (when the pass over ``epoch`` started) is still the current one."""
        if seen == self.number:
            return
        if self.new_pass:
            raise RuntimeError(
                f"a newer pass over this {self.owner} started ({self.change}) while this iteration over epoch "
                f"{epoch} was running; one {self.owner} runs one pass at a time. Finish or drop the old "
                f"iterator, or give each loader its own {self.owner}"
            )
        raise RuntimeError(
            f"{self.owner} was reconfigured ({self.change}) while this iteration over epoch {epoch} was "
            f"running; continuing would mix two epochs or resume points. Call set_epoch()/load_state_dict() "
            f"between passes and start a new pass over the DataLoader"
        )


class OneThread:
    """Held while a pass hands out a batch: a second thread calling ``next()`` meanwhile is refused.

    Two threads inside one pass would interleave the moves of its position (and of the packer's
    window) and corrupt both; ``state()`` waits on :attr:`lock` so a snapshot never sees half a batch.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.lock = threading.RLock()

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=False):
            raise RuntimeError(
                f"two threads called next() on one {self.owner} pass at the same time; a pass is not "
                f"thread-safe. Iterate it from one thread (DataLoader worker processes each get their own copy)"
            )

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        self.lock.release()


def check_epoch(epoch: Any) -> int:
    """``epoch`` as an int, or ValueError naming it."""
    return check_int(epoch, name="epoch", minimum=0, maximum=EPOCH_MAX)


def check_positive_lengths(lengths: np.ndarray) -> None:
    """ValueError naming the first example whose length is below one token."""
    if len(lengths):
        low = int(np.argmin(lengths))
        if lengths[low] <= 0:
            raise ValueError(
                f"lengths[{low}] = {int(lengths[low])}: every example needs at least one token; filter "
                f"empty examples out of the dataset (and their lengths) first"
            )


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
    some); otherwise a missing field is a mismatch. The error lists every mismatch.
    """
    if not isinstance(state, dict) or state.get("format") != expected_format:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a {owner} state (format {_shown(got)}, expected {expected_format!r}); pass the dict "
                         f"{owner}.state_dict() returned")
    wrong = [
        f"{k}: saved {_shown(state[k]) if k in state else '(missing)'}, this {noun} {options[k]!r}"
        for k in checked
        if (k in state or not absent_ok) and (k not in state or not _same(state[k], options[k]))
    ]
    if wrong:
        raise ValueError(
            f"this state was saved by a {owner} over other data or options, so resuming would not continue "
            f"where it stopped; build the {owner} with the saved values or start without the state. "
            f"Mismatched fields: " + "; ".join(wrong)
        )
    return state


def _same(saved: Any, own: Any) -> bool:
    # Same type too: a saved 1 for True, or 8.0 for 8, is not what this loader writes.
    return type(saved) is type(own) and saved == own


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


class SavedFields:
    """The fields of a saved state, read as untrusted input: each one type- and range-checked.

    Every refusal is a ValueError naming the field, its value and the fix; a state that passes can
    be used without another check (no KeyError, IndexError or silently empty epoch later).
    """

    def __init__(self, state: Mapping[str, Any], *, owner: str, noun: str) -> None:
        self.state, self.owner, self.noun = state, owner, noun

    def fail(self, field: str, value: Any, why: str) -> NoReturn:
        self._refuse(f"field {field} = {_shown(value)}: {why}")

    def get(self, key: str) -> Any:
        if key not in self.state:
            self._refuse(f"field {key!r} is missing")
        return self.state[key]

    def _refuse(self, what: str) -> NoReturn:
        raise ValueError(
            f"{self.owner} state {what}. This state was not saved by this {self.noun} (or was changed since): "
            f"load the dict its state_dict() returned, or start without it"
        )

    def integer(self, field: str, value: Any, *, minimum: int = 0, maximum: Optional[int] = None) -> int:
        """``value`` (the field ``field``) as an int in ``[minimum, maximum]``."""
        if not is_int(value):
            self.fail(field, value, f"expected an int, got {type(value).__name__}")
        number = int(value)
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(field, value, f"out of range (expected an int {bound})")
        return number

    def flag(self, field: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            self.fail(field, value, f"expected True or False, got {type(value).__name__}")
        return bool(value)

    def items(self, field: str, value: Any, *, length: Optional[int] = None) -> List[Any]:
        """``value`` as a list (a tuple is accepted), of ``length`` entries if given."""
        if not isinstance(value, (list, tuple)):
            self.fail(field, value, f"expected a list, got {type(value).__name__}")
        if length is not None and len(value) != length:
            self.fail(field, value, f"expected {length} entries, got {len(value)}")
        return list(value)
