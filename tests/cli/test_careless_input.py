"""Careless input to every command: one line on stderr naming the option (or row) and value, the exit code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from warppack.cli.errors import EXIT_BAD_COLUMN, EXIT_NO_DEVICE, EXIT_NOTHING_TO_PACK, EXIT_USAGE
from warppack.cli.stats import numbers as _numbers
from warppack.cli.stats.budget import MAX_SPLIT_PIECES
from warppack.cli.stats.refusals import BadLength, NothingToPack, Overlong, TooManyPieces
from warppack.engine.options import INT32_MAX

LENGTHS = np.array([5, 17, 3, 40, 40, 12, 9, 64], dtype=np.int64)


@pytest.fixture
def lengths_file(tmp_path):
    def save(values, name="l.npy"):
        np.save(tmp_path / name, np.asarray(values, dtype=np.int64))
        return tmp_path / name

    return save


# -- stats: lengths no batch can hold ---------------------------------------------------------


@pytest.mark.parametrize("extra", [["--max-tokens", "8"], ["--max-tokens", "8", "--overlong", "split"], []])
def test_a_length_past_int32_is_refused_with_its_row(lengths_file, run_cli, one_line_error, extra):
    code, out, err = run_cli(["stats", lengths_file([5, 2**62, 7]), *extra, "--no-plot"])
    assert code == EXIT_BAD_COLUMN
    one_line_error(err)
    assert "example 1 has 4,611,686,018,427,387,904 tokens" in err and "2,147,483,647" in err
    assert "max_tokens=" not in err and "MemoryError" not in err and out == ""


def test_a_length_at_the_int32_limit_sweeps_only_budgets_that_exist(lengths_file, run_cli):
    code, out, err = run_cli(["stats", lengths_file([5, INT32_MAX, 7]), "--max-tokens", 8, "--json", "--no-plot"])
    assert code == 0, err
    result = json.loads(out)
    assert result["max_tokens"] == 8 and result["recommended"]["max_tokens"] == INT32_MAX
    assert max(result["budget_sweep"]["max_tokens"]) == INT32_MAX
    # splitting it at 8 tokens would make 2**28 pieces: the alternative is left out, not attempted
    assert result["recommended"]["split_alternative"] is None


def test_a_split_into_too_many_pieces_is_refused(lengths_file, run_cli, one_line_error):
    path = lengths_file(np.full(40, INT32_MAX))
    code, _, err = run_cli(["stats", path, "--max-tokens", 1, "--overlong", "split", "--no-plot"])
    assert code == EXIT_USAGE
    one_line_error(err)
    assert f"--overlong split with --max-tokens 1 cuts the examples into {40 * INT32_MAX:,} sequences" in err
    assert f"{MAX_SPLIT_PIECES:,}" in err


def test_the_numbers_raise_plain_value_errors():
    """compute_stats knows nothing of exit codes: ValueError subclasses carrying what went wrong."""
    with pytest.raises(NothingToPack, match="all 2 examples are empty"):
        _numbers.compute_stats(np.zeros(2, dtype=np.int64), 8)
    with pytest.raises(BadLength) as bad:
        _numbers.compute_stats(np.array([3, -1]), 8)
    assert (bad.value.index, bad.value.value) == (1, -1)
    with pytest.raises(Overlong) as overlong:
        _numbers.compute_stats(LENGTHS, 32, overlong="error")
    assert (overlong.value.count, overlong.value.index, overlong.value.length) == (3, 3, 40)
    assert "max_tokens=32" in str(overlong.value) and "--" not in str(overlong.value)
    with pytest.raises(TooManyPieces):
        _numbers.compute_stats(np.full(40, INT32_MAX), 1, overlong="split")
    for error in (NothingToPack, BadLength, Overlong, TooManyPieces):
        assert issubclass(error, ValueError)
    with pytest.raises(ValueError, match="max_tokens"):
        _numbers.compute_stats(LENGTHS, 0)


# -- stats: --plot ----------------------------------------------------------------------------


def test_plot_without_an_extension_writes_and_reports_path_png(lengths_file, tmp_path, run_cli):
    pytest.importorskip("matplotlib")
    code, out, err = run_cli(["stats", lengths_file(LENGTHS), "--plot", tmp_path / "report"])
    assert code == 0, err
    assert f"plot: {tmp_path / 'report.png'} (--plot, .png added)" in out
    assert (tmp_path / "report.png").is_file() and not (tmp_path / "report").exists()


def test_plot_into_a_folder_uses_the_default_name(lengths_file, tmp_path, run_cli):
    pytest.importorskip("matplotlib")
    (tmp_path / "plots").mkdir()
    code, out, err = run_cli(["stats", lengths_file(LENGTHS), "--plot", tmp_path / "plots"])
    assert code == 0, err
    target = tmp_path / "plots" / "l.npy-warppack-stats.png"
    assert target.is_file() and f"plot: {target} (--plot names a folder)" in out


@pytest.mark.parametrize("name", ["report.pdf", "report.svg", "report.PNG.txt"])
def test_plot_with_another_extension_is_refused(lengths_file, tmp_path, run_cli, one_line_error, name):
    code, out, err = run_cli(["stats", lengths_file(LENGTHS), "--plot", tmp_path / name])
    assert code == EXIT_USAGE
    one_line_error(err)
    assert f"--plot {tmp_path / name}" in err and ".png" in err
    assert out == "" and not (tmp_path / name).exists()


def test_plot_extension_png_in_capitals_is_kept(lengths_file, tmp_path, run_cli):
    pytest.importorskip("matplotlib")
    code, out, _ = run_cli(["stats", lengths_file(LENGTHS), "--plot", tmp_path / "R.PNG"])
    assert code == 0 and (tmp_path / "R.PNG").is_file() and f"plot: {tmp_path / 'R.PNG'} (--plot)" in out


# -- every numeric option: negative, zero, huge -----------------------------------------------

STATS_BAD = [
    ("--max-tokens", "0"), ("--max-tokens", "-8"), ("--max-tokens", str(2**31)), ("--max-tokens", str(10**30)),
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--batch-size", str(2**31)), ("--batch-size", str(10**22)),
    ("--max-length", "0"), ("--max-length", "-3"), ("--max-length", str(2**31)),
    ("--buffer-size", "0"), ("--buffer-size", "-1"), ("--buffer-size", str(2**31)),
    ("--seed", "-1"), ("--seed", str(2**64)),
    ("--target-efficiency", "0"), ("--target-efficiency", "-0.5"), ("--target-efficiency", "1.5"),
    ("--target-efficiency", "nan"), ("--target-efficiency", "inf"),
]


@pytest.mark.parametrize("flag, value", STATS_BAD)
def test_stats_refuses_bad_numbers(lengths_file, run_cli, one_line_error, flag, value):
    argv = ["stats", lengths_file(LENGTHS), flag, value, "--no-plot"]
    if flag != "--max-tokens":
        argv += ["--max-tokens", "64"]
    code, out, err = run_cli(argv)
    assert code == EXIT_USAGE, err
    one_line_error(err)
    assert flag in err and out == ""
    shown = value if math.isfinite(float(value)) else str(float(value))
    assert shown in err


@pytest.mark.parametrize("flag", ["--max-length", "--batch-size", "--buffer-size", "--seed"])
def test_stats_accepts_the_largest_values(lengths_file, run_cli, flag):
    largest = {"--seed": 2**64 - 1}.get(flag, INT32_MAX)
    code, out, err = run_cli(["stats", lengths_file(LENGTHS), "--max-tokens", 64, flag, largest, "--json", "--no-plot"])
    assert code == 0, err
    result = json.loads(out)
    if flag == "--max-length":
        assert result["pad_to_max"]["length"] == INT32_MAX
    if flag == "--batch-size":  # one batch of everything, padded to the longest
        assert result["dynamic_padding"]["slots"] == len(LENGTHS) * int(LENGTHS.max())


DEMO_BAD = [
    ("--steps", "0"), ("--steps", "-2"), ("--steps", str(10**9)),
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--batch-size", str(10**9)),
    ("--max-len", "0"), ("--max-len", "-512"), ("--max-len", str(10**9)),
    ("--source-bytes", "0"), ("--source-bytes", str(2**40)),
    ("--seed", "-1"),
]


@pytest.mark.parametrize("flag, value", DEMO_BAD)
def test_demo_refuses_bad_numbers(run_cli, one_line_error, flag, value):
    code, out, err = run_cli(["demo", flag, value])
    assert code == EXIT_USAGE, err
    one_line_error(err, "demo")
    assert flag in err and value in err and out == ""


def test_demo_refuses_steps_too_large_for_memory(run_cli, one_line_error):
    code, _, err = run_cli(["demo", "--batch-size", 1024, "--max-len", 1024])
    assert code == EXIT_USAGE
    one_line_error(err, "demo")
    assert "--batch-size 1024 x --max-len 1024 = 1,048,576 tokens per step" in err


def test_demo_refuses_a_device_it_cannot_use(run_cli, one_line_error, monkeypatch):
    import torch

    code, _, err = run_cli(["demo", "--device", "gpu0"])
    assert code == EXIT_USAGE
    one_line_error(err, "demo")
    assert "'gpu0'" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(["demo", "--device", "cuda"])
    assert code == EXIT_NO_DEVICE
    one_line_error(err, "demo")
    assert "--device cpu" in err


CALIBRATE_BAD = [
    ["--max-seq-len", "0"], ["--max-seq-len", "-1"], ["--max-seq-len", str(2**31)],
    ["--pad-to-multiple-of", "0"], ["--pad-to-multiple-of", "-8"], ["--pad-to-multiple-of", str(2**31)],
    ["--headroom", "0"], ["--headroom", "1"], ["--headroom", "1.5"], ["--headroom", "nan"], ["--headroom", "-0.1"],
    ["--static-shape", "--max-sequences", "0"], ["--static-shape", "--max-sequences", "-4"],
    ["--static-shape", "--max-sequences", str(2**31)],
    ["--max-sequences", "8"],  # a good value, but it goes with --static-shape
]


@pytest.mark.parametrize("extra", CALIBRATE_BAD)
def test_calibrate_refuses_bad_values(tmp_path, run_cli, one_line_error, extra):
    code, out, err = run_cli(["calibrate", tmp_path, *extra])  # checked before the model is looked for
    assert code == EXIT_USAGE, err
    one_line_error(err, "calibrate")
    flag, value = extra[-2:]
    assert flag in err and value in err and out == ""


def test_demo_with_too_little_data_for_two_batches(run_cli, one_line_error):
    pytest.importorskip("transformers")
    code, out, err = run_cli(["demo", "--source-bytes", 20_000, "--batch-size", 64, "--max-len", 64,
                              "--steps", 1, "--device", "cpu"])
    assert code == EXIT_NOTHING_TO_PACK
    one_line_error(err, "demo")
    assert "the data gave only 0 batch(es)" in err and "training padded" in out
