"""Checks of numeric command-line options: a bad value is a one-line usage error naming the flag."""

from __future__ import annotations

from typing import Optional

from warppack.cli.errors import EXIT_USAGE, CliError
from warppack.engine.options import INT32_MAX, check_int
from warppack.engine.options import check_fraction as engine_check_fraction

__all__ = ["check_count", "check_fraction", "check_seed"]


def check_count(
    value: Optional[int], *, flag: str, example: int, minimum: int = 1, maximum: int = INT32_MAX
) -> Optional[int]:
    """``value`` (None passes) within [minimum, maximum]; the default maximum is cu_seqlens' int32."""
    if value is None:
        return None
    try:
        return check_int(value, name=flag, minimum=minimum, maximum=maximum, example=example)
    except (TypeError, ValueError) as error:
        raise CliError(str(error), EXIT_USAGE) from None


def check_fraction(value: Optional[float], *, flag: str, closed_above: bool) -> Optional[float]:
    """``value`` (None passes) in (0, 1], or in (0, 1) when not ``closed_above``; NaN is refused."""
    if value is None:
        return None
    try:
        return engine_check_fraction(value, name=flag, example="0.5", closed_above=closed_above)
    except ValueError:
        interval = "(0, 1]" if closed_above else "(0, 1)"
        raise CliError(f"{flag} must be in {interval}, got {value}", EXIT_USAGE) from None


def check_seed(value: Optional[int]) -> Optional[int]:
    """``--seed`` (None passes): a non-negative integer that fits numpy's 64-bit seeds."""
    return check_count(value, flag="--seed", example=0, minimum=0, maximum=2**64 - 1)
