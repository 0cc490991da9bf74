"""Fixtures of the CLI tests: run ``warppack`` in-process, and check the one-line error contract."""

from __future__ import annotations

from typing import Callable, List, Tuple

import pytest

from warppack.cli.main import main

Result = Tuple[int, str, str]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture) -> Callable[[List[object]], Result]:
    """``run_cli(["stats", path, ...])``: the exit code, stdout and stderr of ``warppack ...``."""

    def run(argv: List[object]) -> Result:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _check_one_line_error(err: str, command: str = "stats") -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warppack {command}: error: "), err
    assert "Traceback" not in err


@pytest.fixture
def one_line_error() -> Callable[..., None]:
    """``one_line_error(err, command="stats")``: stderr is exactly one ``warppack CMD: error:`` line."""
    return _check_one_line_error
