"""Progress bars for the command line: tqdm when installed, a tiny fallback otherwise.

Bars are drawn on stderr and only when both stdout and stderr are terminals, so logs, pipes and
CI output stay clean. ``WARPPACK_PROGRESS=1`` forces bars on, ``WARPPACK_PROGRESS=0`` turns them off.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import Any, Iterable, Iterator, Optional, TextIO, Type, TypeVar

__all__ = ["Progress", "progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(stream: Optional[TextIO] = None) -> bool:
    """Whether to draw progress bars: forced by ``WARPPACK_PROGRESS``, else only on a terminal."""
    forced = os.environ.get("WARPPACK_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    streams = (sys.stdout, stream or sys.stderr)
    return all(getattr(s, "isatty", lambda: False)() for s in streams)


class _TinyBar:
    """A dependency-free bar: ``desc  42% |████      | 21/50 [3.1s]``, redrawn at most 10 times a second."""

    def __init__(self, total: Optional[float], desc: str, unit: str, stream: TextIO) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.n: float = 0
        self._start = self._last = time.monotonic()
        self._width = 0

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= 0.1 or (self.total is not None and self.n >= self.total):
            self._last = now
            self._draw(now)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self._draw(time.monotonic())

    def _draw(self, now: float) -> None:
        elapsed = f"[{now - self._start:.1f}s]"
        if self.total:
            frac = min(1.0, self.n / self.total)
            filled = int(frac * 20)
            text = f"{self.desc} {frac:4.0%} |{'█' * filled}{' ' * (20 - filled)}| {self.n:g}/{self.total:g} {elapsed}"
        else:
            text = f"{self.desc} {self.n:g} {self.unit} {elapsed}"
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


class _NoBar:
    n: float = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """A progress bar usable as a context manager (``with Progress(total=3) as bar: bar.update()``).

    Quiet (does nothing) unless :func:`progress_enabled`; uses ``tqdm`` when it is installed.
    """

    def __init__(
        self,
        total: Optional[float] = None,
        *,
        desc: str = "",
        unit: str = "it",
        enabled: Optional[bool] = None,
        stream: Optional[TextIO] = None,
    ) -> None:
        stream = stream or sys.stderr
        if enabled is None:
            enabled = progress_enabled(stream)
        self.enabled = enabled
        self._bar: Any
        if not enabled:
            self._bar = _NoBar()
        else:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self._bar = _TinyBar(total, desc, unit, stream)
            else:
                self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True)

    def update(self, n: float = 1) -> None:
        self._bar.update(n)

    def set_description(self, desc: str) -> None:
        self._bar.set_description(desc)

    @property
    def n(self) -> float:
        return float(self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def progress(
    iterable: Iterable[T],
    *,
    total: Optional[float] = None,
    desc: str = "",
    unit: str = "it",
    enabled: Optional[bool] = None,
) -> Iterator[T]:
    """Yield from ``iterable`` while advancing a bar (quiet when output is not a terminal)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc=desc, unit=unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)
