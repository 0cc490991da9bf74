"""What ``warppack stats`` refuses to compute: ValueErrors the command turns into exit codes."""

from __future__ import annotations

import numpy as np

from warppack.engine.options import INT32_MAX

__all__ = ["BadLength", "NothingToPack", "Overlong", "TooManyPieces", "check_lengths"]


class NothingToPack(ValueError):
    """No example holds a token: there are no rows, or every example is empty."""


class BadLength(ValueError):
    """Example ``index`` has a length no batch can hold: negative, or past cu_seqlens' int32."""

    def __init__(self, message: str, *, index: int, value: int) -> None:
        super().__init__(message)
        self.index, self.value = index, value


class Overlong(ValueError):
    """``overlong="error"`` and ``count`` examples are longer than ``max_tokens``."""

    def __init__(self, *, count: int, index: int, length: int, max_tokens: int) -> None:
        super().__init__(
            f"{count:,} examples are longer than max_tokens={max_tokens:,} (the first is example {index}, "
            f"{length:,} tokens); raise max_tokens or pass overlong='truncate' or 'split'"
        )
        self.count, self.index, self.length, self.max_tokens = count, index, length, max_tokens


class TooManyPieces(ValueError):
    """``overlong="split"`` would cut the examples into more than ``limit`` sequences."""

    def __init__(self, *, pieces: int, limit: int, max_tokens: int) -> None:
        super().__init__(
            f"overlong='split' at max_tokens={max_tokens:,} cuts the examples into {pieces:,} sequences, "
            f"more than the {limit:,} planned here; raise max_tokens or pass overlong='truncate'"
        )
        self.pieces, self.limit, self.max_tokens = pieces, limit, max_tokens


def check_lengths(lengths: np.ndarray) -> None:
    """Raise :class:`BadLength` for the first length that is negative or past cu_seqlens' int32."""
    negative = lengths < 0
    if negative.any():
        index = int(np.argmax(negative))
        value = int(lengths[index])
        raise BadLength(f"example {index} has a negative length ({value})", index=index, value=value)
    huge = lengths > INT32_MAX
    if huge.any():
        index = int(np.argmax(huge))
        value = int(lengths[index])
        raise BadLength(
            f"example {index} has {value:,} tokens, more than the {INT32_MAX:,} that cu_seqlens (int32) "
            f"can count; is that column really token counts? fix or drop that example",
            index=index,
            value=value,
        )
