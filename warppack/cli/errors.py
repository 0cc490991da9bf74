"""The CLI's error type and exit codes: every failure a script may tell apart has its own code."""

from __future__ import annotations

from typing import Dict

__all__ = [
    "EXIT_BAD_COLUMN",
    "EXIT_BAD_PATH",
    "EXIT_CODES",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_MISSING_DEPENDENCY",
    "EXIT_NOTHING_TO_PACK",
    "EXIT_NO_DEVICE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug: please report it)
EXIT_USAGE = 2  # bad arguments or an invalid value (argparse uses 2 as well)
EXIT_BAD_PATH = 3  # a path that does not exist, cannot be read, or is not a supported format
EXIT_BAD_COLUMN = 4  # the column is missing, or holds no token ids / lengths
EXIT_NOTHING_TO_PACK = 5  # no rows, or every example is empty
EXIT_MISSING_DEPENDENCY = 6  # an optional package the command needs is not installed
EXIT_NO_DEVICE = 7  # no CUDA device (calibrate measures real GPU memory)
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES: Dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "unexpected error",
    EXIT_USAGE: "bad arguments or an invalid value",
    EXIT_BAD_PATH: "path missing, unreadable or not a supported format",
    EXIT_BAD_COLUMN: "column missing or not token ids / lengths",
    EXIT_NOTHING_TO_PACK: "nothing to pack (no rows, or all examples empty)",
    EXIT_MISSING_DEPENDENCY: "an optional dependency is not installed",
    EXIT_NO_DEVICE: "no CUDA device",
    EXIT_INTERRUPTED: "interrupted",
}


class CliError(Exception):
    """An error with a one-line message and the exit code the command ends with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
