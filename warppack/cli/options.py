"""Checks of numeric command-line options: a bad value is a one-line usage error naming the flag."""

from __future__ import annotations

from typing import Optional

from warppack.cli.errors import EXIT_USAGE, CliError
from warppack.engine.options import INT32_MAX, check_int

__all__ = ["check_count", "check_fraction"]


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
    if 0 < value < 1 or (closed_above and value == 1):
        return value
    interval = "(0, 1]" if closed_above else "(0, 1)"
    raise CliError(f"{flag} must be in {interval}, got {value}", EXIT_USAGE)
