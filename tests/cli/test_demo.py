"""``warppack demo``, really run but small: a line before each phase, bars only where progress is on."""

from __future__ import annotations

import re

import pytest

from warppack.cli.main import main

SMALL = ["demo", "--steps", "1", "--batch-size", "2", "--max-len", "32", "--source-bytes", "20000", "--device", "cpu"]


@pytest.mark.parametrize("forced", ["1", ""])
def test_demo_announces_each_phase_and_shows_progress_on_a_terminal(capfd, monkeypatch, forced):
    """capfd: what native libraries (the tokenizers package) write to the file descriptors counts too."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("WARPPACK_PROGRESS", forced)  # "": decided by the terminal, and pytest's capture is none
    code = main(SMALL)
    out, err = capfd.readouterr()
    assert code == 0, err
    phases = [
        "demo on cpu (attention: warppack)",
        "tokenizing 20,000 bytes of the standard library's sources",
        "sequences from the standard library's sources",
        "training padded: 1 warm-up + 1 timed steps, 2 sequences per batch",
        "training packed: 1 warm-up + 1 timed steps, up to 64 tokens per batch",
        "packed trains",
    ]
    assert "\n\n" not in out  # bars go to stderr only, nothing of them (not even blank lines) to stdout
    positions = [out.find(phase) for phase in phases]
    assert -1 not in positions and positions == sorted(positions), out
    table = out.splitlines()[-5:-1]
    assert table[0].split()[:2] == ["mode", "steps"] and table[2].startswith("padded") and table[3].startswith("packed")
    if forced:
        for bar in ("training the tokenizer", "tokenizing", "training padded", "training packed"):
            assert bar in err, err
        for arm in ("padded", "packed"):  # a bar over each arm's steps: the warm-up and the timed one
            assert re.search(rf"training {arm}\b[^\r\n]*\b0/2\b", err), err
    else:
        assert err == ""
