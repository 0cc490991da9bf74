"""The ``warppack`` console script: every command, every documented exit code, no tracebacks.

Most tests call ``main([...])`` in-process (cheap); a few run the real console entry point in a
subprocess to check what a shell script sees (exit status, one-line stderr, quiet when piped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import warppack
from warppack.cli import main as _cli
from warppack.cli.stats import command as _stats
from warppack.cli.main import main
from warppack.cli.errors import (
    EXIT_BAD_COLUMN,
    EXIT_BAD_PATH,
    EXIT_FAILURE,
    EXIT_MISSING_DEPENDENCY,
    EXIT_NO_DEVICE,
    EXIT_NOTHING_TO_PACK,
    EXIT_USAGE,
)
from warppack.progress import Progress, progress, progress_enabled

REPO = Path(__file__).resolve().parents[2]

LENGTHS = np.array([5, 17, 3, 40, 40, 12, 9, 64, 1, 30, 22, 8, 50, 2, 33, 7], dtype=np.int64)


def _rows(lengths=LENGTHS):
    return [{"input_ids": list(range(int(n))), "text": "x" * int(n), "n": int(n)} for n in lengths]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 16 examples as .npy, .jsonl, .parquet, .arrow and saved datasets folders."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("stats_data")
    np.save(root / "lengths.npy", LENGTHS)
    with open(root / "data.jsonl", "w") as f:
        for row in _rows():
            f.write(json.dumps(row) + "\n")
    table = pa.Table.from_pylist(_rows())
    pq.write_table(table, root / "data.parquet", row_group_size=5)
    with pa.OSFile(str(root / "data.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:  # the format datasets caches in
            writer.write_table(table)
    paths = {
        "npy": root / "lengths.npy",
        "jsonl": root / "data.jsonl",
        "parquet": root / "data.parquet",
        "arrow": root / "data.arrow",
    }
    try:
        import datasets
    except ImportError:
        return paths
    ds = datasets.Dataset.from_list(_rows())
    ds.save_to_disk(str(root / "ds"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(root / "dsdict"))
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(root / "ds_two"))
    paths.update(datasets=root / "ds", dsdict=root / "dsdict", ds_two=root / "ds_two")
    return paths


# -- stats: every input format -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "jsonl", "parquet", "arrow", "datasets", "dsdict"])
def test_stats_reads_every_format_with_the_same_numbers(data, kind, tmp_path, run_cli):
    if kind not in data:
        pytest.skip("datasets is not installed")
    code, out, err = run_cli(["stats", data[kind], "--max-tokens", 64, "--json", "--no-plot"])
    assert code == 0, err
    result = json.loads(out)
    assert result["examples"] == len(LENGTHS)
    assert result["tokens"] == int(LENGTHS.sum())
    bfd = result["strategies"]["bfd"]
    expected = warppack.plan(LENGTHS, 64)
    assert bfd["bins"] == expected.num_bins
    assert bfd["efficiency"] == pytest.approx(expected.efficiency)
    assert set(result["strategies"]) == {"bfd", "ffd", "online"}
    assert result["dynamic_padding"]["batch_size"] == 8 and result["dynamic_padding"]["batch_size_assumed"]
    if kind == "dsdict":
        assert any("split 'train'" in note for note in result["notes"])


def test_stats_table_report(data, tmp_path, run_cli):
    pytest.importorskip("matplotlib")
    code, out, err = run_cli(["stats", data["parquet"], "--max-tokens", 64, "--batch-size", 4, "--plot", tmp_path / "p.png"])
    assert code == 0, err
    for needle in ("bfd", "ffd", "online", "efficiency", "pad to max", "dynamic padding (random batches of 4, --batch-size",
                   "speed-up limit", "recommended budget: --max-tokens", f"plot: {tmp_path / 'p.png'}"):
        assert needle in out, needle
    assert "assumed" not in out  # the batch size was given
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_numbers_match_definitions(data, run_cli):
    code, out, _ = run_cli(["stats", data["npy"], "--max-tokens", 64, "--batch-size", 4, "--json", "--no-plot"])
    assert code == 0
    r = json.loads(out)
    tokens = int(LENGTHS.sum())
    assert r["pad_to_max"]["slots"] == len(LENGTHS) * int(LENGTHS.max())
    assert r["dynamic_padding"]["slots"] == _stats.dynamic_padding_slots(LENGTHS, 4, seed=0)
    for s in r["strategies"].values():
        packed = s["bins"] * 64
        assert s["padding_tokens"] == packed - tokens
        assert s["speedup_limit_vs_pad_to_max"] == pytest.approx(r["pad_to_max"]["slots"] / packed)
        assert s["speedup_limit_vs_dynamic"] == pytest.approx(r["dynamic_padding"]["slots"] / packed)
        base_pad = r["pad_to_max"]["slots"] - tokens
        assert s["padding_avoided_vs_pad_to_max"] == pytest.approx(1 - (packed - tokens) / base_pad)
    assert r["plot"] is None
    rec = r["recommended"]
    assert rec["max_tokens"] % 64 == 0 and rec["max_tokens"] >= LENGTHS.max()


def test_dynamic_padding_slots_by_hand():
    lengths = np.array([1, 2, 3, 4, 5])
    # batch size 1: no padding at all; batch size 5: everything padded to 5
    assert _stats.dynamic_padding_slots(lengths, 1) == 15
    assert _stats.dynamic_padding_slots(lengths, 5) == 25
    slots = _stats.dynamic_padding_slots(lengths, 2)
    assert 15 <= slots <= 25


def test_stats_integer_column_is_taken_as_lengths(data, run_cli):
    code, out, _ = run_cli(["stats", data["parquet"], "--max-tokens", 64, "--column", "n", "--json", "--no-plot"])
    assert code == 0
    r = json.loads(out)
    assert r["tokens"] == int(LENGTHS.sum())
    assert any("taken as the lengths" in note for note in r["notes"])


def test_stats_overlong_policies(data, run_cli, one_line_error):
    code, out, _ = run_cli(["stats", data["npy"], "--max-tokens", 32, "--json", "--no-plot"])
    assert code == 0
    r = json.loads(out)
    over = int((LENGTHS > 32).sum())
    assert r["longer_than_budget"] == over and r["overlong"] == "truncate"
    assert r["tokens_cut"] == int(np.maximum(LENGTHS - 32, 0).sum())
    code, out, _ = run_cli(["stats", data["npy"], "--max-tokens", 32, "--overlong", "split", "--json", "--no-plot"])
    r = json.loads(out)
    assert code == 0 and r["tokens"] == int(LENGTHS.sum()) and r["sequences"] > len(LENGTHS)
    code, out, err = run_cli(["stats", data["npy"], "--max-tokens", 32, "--overlong", "error"])
    assert code == EXIT_USAGE
    one_line_error(err)
    assert "longer than --max-tokens 32" in err


def test_stats_table_warns_about_truncation(data, run_cli):
    code, out, _ = run_cli(["stats", data["npy"], "--max-tokens", 32, "--no-plot"])
    assert code == 0
    assert "longer than the budget: truncated" in out


def test_stats_empty_examples_are_ignored_with_a_note(tmp_path, run_cli):
    np.save(tmp_path / "l.npy", np.array([0, 4, 0, 7]))
    code, out, _ = run_cli(["stats", tmp_path / "l.npy", "--max-tokens", 16, "--no-plot"])
    assert code == 0
    assert "2 empty examples ignored" in out


def test_stats_default_plot_goes_next_to_the_data(tmp_path, run_cli):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "l.npy", LENGTHS)
    code, out, _ = run_cli(["stats", tmp_path / "l.npy", "--max-tokens", 64])
    assert code == 0
    target = tmp_path / "l.npy-warppack-stats.png"
    assert target.is_file()
    assert f"plot: {target} (next to the data)" in out


def test_stats_without_matplotlib(tmp_path, monkeypatch, run_cli, one_line_error):
    from warppack.cli import plots as _plots

    def missing():
        raise _plots.MatplotlibMissing("matplotlib is not installed; pip install matplotlib")

    monkeypatch.setattr(_plots, "_figure_class", missing)
    np.save(tmp_path / "l.npy", LENGTHS)
    code, out, _ = run_cli(["stats", tmp_path / "l.npy", "--max-tokens", 64])
    assert code == 0  # the numbers still come; the plot is skipped with a note
    assert "no plot: matplotlib is not installed; pip install matplotlib" in out
    code, _, err = run_cli(["stats", tmp_path / "l.npy", "--max-tokens", 64, "--plot", tmp_path / "x.png"])
    assert code == EXIT_MISSING_DEPENDENCY
    one_line_error(err)


def test_stats_large_input_uses_a_sample_for_the_sweep(monkeypatch):
    from warppack.cli.stats import budget as _stats_budget

    monkeypatch.setattr(_stats_budget, "SWEEP_SAMPLE", 100)
    lengths = np.random.default_rng(0).integers(1, 200, 1000)
    s = _stats.compute_stats(lengths, 256)
    assert s.recommended["sampled"] == 100
    assert s.strategies[0].bins == warppack.plan(lengths, 256).num_bins


# -- stats: error paths and exit codes ---------------------------------------------------------


def test_stats_bad_path(tmp_path, run_cli, one_line_error):
    code, _, err = run_cli(["stats", tmp_path / "missing.parquet", "--max-tokens", 64])
    assert code == EXIT_BAD_PATH
    one_line_error(err)
    assert "no such file or folder" in err


def test_stats_unknown_format_and_plain_folder(tmp_path, run_cli, one_line_error):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    code, _, err = run_cli(["stats", tmp_path / "data.csv", "--max-tokens", 64])
    assert code == EXIT_BAD_PATH
    one_line_error(err)
    (tmp_path / "folder").mkdir()
    code, _, err = run_cli(["stats", tmp_path / "folder", "--max-tokens", 64])
    assert code == EXIT_BAD_PATH
    one_line_error(err)
    assert "save_to_disk" in err


@pytest.mark.parametrize("suffix", ["parquet", "arrow", "jsonl", "npy"])
def test_stats_corrupt_file(tmp_path, suffix, run_cli, one_line_error):
    path = tmp_path / f"broken.{suffix}"
    path.write_bytes(b"\x00\x01 this is not a " + suffix.encode() + b" file {[")
    code, _, err = run_cli(["stats", path, "--max-tokens", 64])
    assert code == EXIT_BAD_PATH, err
    one_line_error(err)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "arrow", "datasets"])
def test_stats_bad_column(data, kind, run_cli, one_line_error):
    if kind not in data:
        pytest.skip("datasets is not installed")
    code, _, err = run_cli(["stats", data[kind], "--max-tokens", 64, "--column", "nope"])
    assert code == EXIT_BAD_COLUMN
    one_line_error(err)
    assert "'nope'" in err and "input_ids" in err  # names the column and lists the ones there


# id -> (DATA: a file of the `data` fixture, a parquet column (built from pyarrow) or a .npy array; the column;
# what the message must say)
BAD_COLUMNS = {
    "text in parquet": ("parquet", "text", ["holds text", "tokenize"]),
    "text in a datasets folder": ("datasets", "text", ["holds text", "tokenize"]),
    "null rows": (lambda pa: pa.array([[1, 2], None, [3]], pa.list_(pa.int64())), "c", ["'c' has 1 null rows"]),
    "floats": (lambda pa: pa.array([1.5, 2.0]), "c", ["'c' holds double", "--column NAME"]),
    "lists of words": (lambda pa: pa.array([["a"], ["b", "c"]]), "c", ["'c' holds list<", "--column NAME"]),
    "negative lengths": (lambda pa: pa.array([3, -1]), "c", ["'c'[1] = -1 is negative"]),
    "lengths past int64": (lambda pa: pa.array([3, 2**63], pa.uint64()), "c", [f"'c'[1] = {2**63} overflows int64"]),
    "a 2-D .npy": (np.ones((3, 4), dtype=np.int64), None, ["2-D int64 array", "1-D integer array"]),
    "a float .npy": (np.ones(3, dtype=np.float32), None, ["float32", "1-D integer array"]),
    "a negative .npy": (np.array([3, -1]), None, ["example 1 has a negative length (-1)"]),
}


@pytest.mark.parametrize("case", list(BAD_COLUMNS))
def test_stats_refuses_a_column_of_no_token_counts(data, case, tmp_path, run_cli, one_line_error):
    source, column, words = BAD_COLUMNS[case]
    if isinstance(source, str):
        if source not in data:
            pytest.skip("datasets is not installed")
        path = data[source]
    elif isinstance(source, np.ndarray):
        path = tmp_path / "lengths.npy"
        np.save(path, source)
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        path = tmp_path / "bad.parquet"
        pq.write_table(pa.table({column: source(pa)}), path)
    code, out, err = run_cli(["stats", path, "--max-tokens", 64, *(["--column", column] if column else [])])
    assert code == EXIT_BAD_COLUMN, err
    one_line_error(err)
    assert out == "" and all(word in err for word in words), err


def test_stats_nothing_to_pack(tmp_path, run_cli, one_line_error):
    np.save(tmp_path / "empty.npy", np.zeros(0, dtype=np.int64))
    code, _, err = run_cli(["stats", tmp_path / "empty.npy", "--max-tokens", 64])
    assert code == EXIT_NOTHING_TO_PACK
    one_line_error(err)
    assert "nothing to pack" in err
    np.save(tmp_path / "zeros.npy", np.zeros(5, dtype=np.int64))
    code, _, err = run_cli(["stats", tmp_path / "zeros.npy", "--max-tokens", 64])
    assert code == EXIT_NOTHING_TO_PACK
    assert "all 5 examples are empty" in err
    (tmp_path / "empty.jsonl").write_text(json.dumps({"input_ids": []}) + "\n")
    code, _, err = run_cli(["stats", tmp_path / "empty.jsonl", "--max-tokens", 64])
    assert code == EXIT_NOTHING_TO_PACK


def test_stats_split_selection(data, run_cli, one_line_error):
    if "ds_two" not in data:
        pytest.skip("datasets is not installed")
    code, _, err = run_cli(["stats", data["ds_two"], "--max-tokens", 64])
    assert code == EXIT_USAGE
    one_line_error(err)
    assert "--split" in err and "'a'" in err
    code, out, _ = run_cli(["stats", data["ds_two"], "--max-tokens", 64, "--split", "b", "--json", "--no-plot"])
    assert code == 0 and json.loads(out)["examples"] == len(LENGTHS)
    code, _, err = run_cli(["stats", data["ds_two"], "--max-tokens", 64, "--split", "zzz"])
    assert code == EXIT_USAGE


def test_stats_unwritable_plot(data, tmp_path, run_cli, one_line_error):
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(["stats", data["npy"], "--max-tokens", 64, "--plot", blocker / "sub" / "p.png"])
    assert code == EXIT_BAD_PATH
    one_line_error(err)


def test_missing_required_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["stats"])
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--max-tokens" in err  # the usage line shows the option ...
    assert "required: DATA" in err  # ... and DATA is what is missing (--max-tokens is optional)


def test_unexpected_errors_are_one_line(monkeypatch, data, run_cli, one_line_error):
    def boom(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(_stats, "compute_stats", boom)
    code, _, err = run_cli(["stats", data["npy"], "--max-tokens", 64])
    assert code == EXIT_FAILURE
    one_line_error(err)
    assert "WARPPACK_DEBUG" in err


# -- help, version, subprocess behaviour ------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["stats"], ["calibrate"], ["demo"]])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: warppack")
    if command in (["stats"], ["calibrate"], ["demo"], []):
        assert "exit codes:" in out


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_USAGE
    assert "COMMAND" in capsys.readouterr().out


def test_demo_is_wired_to_the_demo_module():
    from warppack.cli import demo as _demo

    args = _cli.build_parser().parse_args(["demo", "--steps", "3"])
    assert args.handler is _demo.run and args.steps == 3


def test_console_script_in_a_subprocess(data, tmp_path, one_line_error):
    """What a shell script sees: exit code, one-line stderr, and no progress bar when piped."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, WARPPACK_PROGRESS="", PYTHONPATH=path)  # this checkout, installed or not
    ok = subprocess.run(
        [sys.executable, "-m", "warppack", "stats", str(data["npy"]), "--max-tokens", "64", "--no-plot"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""  # not a terminal: no progress bar, no noise
    assert "recommended budget" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "warppack", "stats", str(tmp_path / "nope.npy"), "--max-tokens", "64"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert bad.returncode == EXIT_BAD_PATH
    assert bad.stdout == ""
    one_line_error(bad.stderr)
    version = subprocess.run(
        [sys.executable, "-m", "warppack", "--version"], capture_output=True, text=True, env=env, timeout=300
    )
    assert version.returncode == 0 and version.stdout.strip() == f"warppack {warppack.__version__}"


# -- calibrate --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_calibrate_bad_path(tmp_path, run_cli, one_line_error):
    code, _, err = run_cli(["calibrate", tmp_path / "nope"])
    assert code == EXIT_BAD_PATH
    one_line_error(err, "calibrate")
    code, _, err = run_cli(["calibrate", tmp_path])  # a folder without a model
    assert code == EXIT_BAD_PATH
    assert "config.json" in err


def test_calibrate_without_cuda_exits_cleanly(tiny_model_dir, monkeypatch, run_cli, one_line_error):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(["calibrate", tiny_model_dir, "--max-seq-len", "64"])
    assert code == EXIT_NO_DEVICE
    one_line_error(err, "calibrate")
    assert "no CUDA device" in err and out == ""


def test_calibrate_calls_the_calibrator_by_name(tiny_model_dir, monkeypatch, run_cli):
    """With CUDA faked (the model stays on the CPU), the command wires calibrate_token_budget."""
    import inspect

    import torch

    from warppack.cli import calibrate as _cli_calibrate

    seen = {}
    real = getattr(warppack, "calibrate_token_budget", None)

    def fake(model, *, max_seq_len, accelerator=None, optimizer=None, collator=None, headroom=0.08, cache=True):
        seen.update(model=model, optimizer=optimizer, max_seq_len=max_seq_len, headroom=headroom, cache=cache,
                    collator=collator)
        return 4096

    if real is not None:  # keep the fake's keyword names in step with the real calibrator
        real_params = inspect.signature(real).parameters
        for name in ("accelerator", "optimizer", "max_seq_len", "collator", "headroom", "cache", "cache_dir"):
            assert name in real_params, f"calibrate_token_budget lost its {name!r} argument"
    monkeypatch.setattr("warppack.memory.calibrate.calibrate_token_budget", fake, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    monkeypatch.setattr(_cli_calibrate, "_to_device", lambda model: model)
    code, out, err = run_cli(["calibrate", tiny_model_dir, "--headroom", "0.1", "--no-cache", "--json"])
    assert code == 0, err
    assert json.loads(out) == {"max_tokens": 4096, "model": str(tiny_model_dir), "max_seq_len": 128, "device": "Fake GPU"}
    assert seen["max_seq_len"] == 128  # from max_position_embeddings
    assert seen["headroom"] == 0.1 and seen["cache"] is False
    assert isinstance(seen["optimizer"], torch.optim.AdamW)
    assert seen["model"].config._attn_implementation == "warppack"
    assert seen["collator"] is None
    code, out, _ = run_cli(["calibrate", tiny_model_dir, "--max-seq-len", "64", "--pad-to-multiple-of", "64"])
    assert code == 0 and "token budget: 4,096 tokens per batch" in out and seen["max_seq_len"] == 64
    assert seen["collator"].pad_to_multiple_of == 64
    code, out, _ = run_cli(["calibrate", tiny_model_dir, "--pad-to-multiple-of", "64", "--static-shape",
                                 "--max-sequences", "32"])
    assert code == 0 and "PackedCollator(max_tokens=4096, static_shape=True, max_sequences=32)" in out
    assert seen["collator"].static_shape and seen["collator"].max_sequences == 32
    assert seen["collator"].pad_to_multiple_of == 64


def test_calibrate_errors_from_the_calibrator_are_one_line(tiny_model_dir, monkeypatch, run_cli, one_line_error):
    import torch

    from warppack.cli import calibrate as _cli_calibrate

    def fails(model, *, accelerator=None, optimizer=None, max_seq_len):
        raise ValueError("the model does not fit even one 128-token sequence: it needed 90 GiB")

    monkeypatch.setattr("warppack.memory.calibrate.calibrate_token_budget", fails, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_cli_calibrate, "_to_device", lambda model: model)
    code, _, err = run_cli(["calibrate", tiny_model_dir])
    assert code == EXIT_USAGE
    one_line_error(err, "calibrate")
    assert "90 GiB" in err
    code, _, err = run_cli(["calibrate", tiny_model_dir, "--headroom", "0.2"])  # fails() takes no headroom
    assert code == EXIT_USAGE and "--headroom is not supported" in err


# -- progress ---------------------------------------------------------------------------------


def test_progress_is_quiet_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("WARPPACK_PROGRESS", raising=False)
    assert not progress_enabled()  # pytest captures: not a terminal
    assert list(progress(range(5), desc="x")) == [0, 1, 2, 3, 4]
    with Progress(3, desc="quiet") as bar:
        bar.update(3)
    assert capsys.readouterr() == ("", "")


def test_progress_can_be_forced(capsys, monkeypatch):
    monkeypatch.setenv("WARPPACK_PROGRESS", "1")
    assert progress_enabled()
    assert list(progress(range(3), desc="forced")) == [0, 1, 2]
    assert "forced" in capsys.readouterr().err
    monkeypatch.setenv("WARPPACK_PROGRESS", "0")
    assert not progress_enabled()


def test_tiny_fallback_bar(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with Progress(4, desc="fallback", enabled=True) as bar:
        for _ in range(4):
            bar.update()
        assert bar.n == 4
    err = capsys.readouterr().err
    assert "fallback" in err and "4/4" in err
