"""The calibration cache reads its files as untrusted input and writes them atomically.

A corrupt entry (not JSON, not an object, another key, a budget of the wrong type or out of
range, malformed details) is measured again with a warning naming the file and the fault — never
trusted, never fatal, on every later call too; a failed write (full disk, a folder in the way)
warns and leaves no temporary file behind.
"""

from __future__ import annotations

import errno
import json
import re
import warnings

import pytest
import torch

import warppack
from warppack.memory import cache

from support.simulated_device import SimulatedDevice, ToyLM

KEY = {"model": {"class": "Toy", "parameters": 10}, "settings": {"max_seq_len": 32, "headroom": 0.08}}
RANGE = dict(minimum=64, maximum=8192, multiple=64)  # what this (pretend) calibration can return


def entry_text(**changes) -> str:
    entry = {"max_tokens": 4096, "key": KEY, "probes": [{"budget": 4096, "fits": True}], "seconds": 1.5}
    entry.update(changes)
    for name in [k for k, v in changes.items() if v is ...]:
        del entry[name]
    return json.dumps(entry)


CORRUPT = [
    ("[1, 2, 3]", "it holds an array where a JSON object belongs"),
    ("null", "it holds null where a JSON object belongs"),
    ('"4096"', "it holds a string where a JSON object belongs"),
    ("4096", "it holds a number where a JSON object belongs"),
    ('{"max_tokens": 40', "it is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "it is not valid JSON"),
    (entry_text(max_tokens=0), "max_tokens=0 is not a budget this calibration can return"),
    (entry_text(max_tokens=-4096), "max_tokens=-4096 is not a budget"),
    (entry_text(max_tokens=2**40), "max_tokens=1099511627776 is not a budget"),
    (entry_text(max_tokens=4000), r"max_tokens=4000 is not a budget this calibration can return \(a multiple of 64"),
    (entry_text(max_tokens=True), "max_tokens is True, not an int"),
    (entry_text(max_tokens=4096.0), "max_tokens is 4096.0, not an int"),
    (entry_text(max_tokens="4096"), "max_tokens is '4096', not an int"),
    (entry_text(max_tokens=...), "max_tokens is None, not an int"),
    (entry_text(max_tokens=float("nan")), "max_tokens is nan, not an int"),
    (entry_text(key={"model": "another"}), "its stored key is not the configuration it is filed under"),
    (entry_text(key=...), "its stored key is not the configuration it is filed under"),
    (entry_text(probes="many"), "probes is 'many', not a list of probe records"),
    (entry_text(probes=[1, 2]), r"probes is \[1, 2\], not a list of probe records"),
    (entry_text(seconds=-1), "seconds is -1, not a duration"),
    (entry_text(seconds=float("inf")), "seconds is inf, not a duration"),
    (entry_text(seconds="1s"), "seconds is '1s', not a duration"),
]


@pytest.mark.parametrize("text,fault", CORRUPT)
def test_a_corrupt_entry_is_measured_again_with_a_warning_naming_file_and_fault(tmp_path, text, fault):
    path = cache.store_budget(KEY, 4096, tmp_path, probes=[{"budget": 4096}], seconds=1.5)
    assert path is not None and cache.load_budget(KEY, tmp_path, **RANGE) == 4096
    path.write_text(text)
    for _ in range(2):  # every later call alike: never fatal, never trusted
        with pytest.warns(RuntimeWarning, match=re.escape(str(path)) + ": " + fault) as caught:
            assert cache.load_budget(KEY, tmp_path, **RANGE) is None
        assert "measuring the token budget again" in str(caught[0].message)


def test_an_unreadable_entry_is_measured_again(tmp_path):
    path = cache.store_budget(KEY, 4096, tmp_path)
    path.write_bytes(b'{"max_tokens": \xff\xfe}')  # not UTF-8
    with pytest.warns(RuntimeWarning, match="it cannot be read"):
        assert cache.load_budget(KEY, tmp_path, **RANGE) is None
    path.unlink()
    path.mkdir()  # a folder where the entry belongs
    with pytest.warns(RuntimeWarning, match="it cannot be read"):
        assert cache.load_budget(KEY, tmp_path, **RANGE) is None


def test_a_missing_entry_is_a_quiet_miss_and_a_valid_one_a_hit(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load_budget(KEY, tmp_path, **RANGE) is None
        tmp_path.joinpath("unrelated.json").write_text("[]")  # other files are not read
        cache.store_budget(KEY, 4096, tmp_path)
        assert cache.load_budget(KEY, tmp_path, **RANGE) == 4096


def _full_disk(entry, f, **kwargs):
    f.write('{"max_tokens": 81')  # part of the entry reached the file
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_no_temporary_file_and_keeps_the_old_entry(tmp_path, monkeypatch):
    path = cache.store_budget(KEY, 4096, tmp_path)
    monkeypatch.setattr(cache.json, "dump", _full_disk)
    with pytest.warns(RuntimeWarning, match=r"could not write the calibration cache entry .*No space left on device"):
        assert cache.store_budget(KEY, 8192, tmp_path) is None
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "no tmp*.tmp left behind"
    assert cache.load_budget(KEY, tmp_path, **RANGE) == 4096


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    path = cache.store_budget(KEY, 4096, tmp_path)
    path.unlink()
    path.mkdir()  # os.replace cannot put a file over a folder
    with pytest.warns(RuntimeWarning, match="could not write the calibration cache entry"):
        assert cache.store_budget(KEY, 4096, tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# ---- through calibrate_token_budget ------------------------------------------------------------------
def _setup():
    torch.manual_seed(0)
    model = ToyLM()
    device = SimulatedDevice(total_bytes=20_000, static_bytes=1000, per_token=100).attach(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), device


def test_calibration_measures_again_over_a_corrupt_entry_and_rewrites_it(tmp_path):
    model, optimizer, device = _setup()
    kwargs = dict(optimizer=optimizer, max_seq_len=32, memory=device, cache_dir=tmp_path, tolerance=0.3)
    budget = warppack.calibrate_token_budget(model, **kwargs)
    (entry,) = tmp_path.glob("*.json")
    good = json.loads(entry.read_text())
    for text in ("[1, 2, 3]", json.dumps({**good, "max_tokens": 2**40}), json.dumps({**good, "max_tokens": 0})):
        entry.write_text(text)
        probes = device.resets
        with pytest.warns(RuntimeWarning, match=re.escape(str(entry))):
            assert warppack.calibrate_token_budget(model, **kwargs) == budget
        assert device.resets > probes, "the budget was measured again"
        assert json.loads(entry.read_text())["max_tokens"] == budget, "the entry was rewritten"
    probes = device.resets
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warppack.calibrate_token_budget(model, **kwargs) == budget
    assert device.resets == probes, "a valid entry is a hit"


def test_calibration_on_a_full_disk_still_returns_the_budget(tmp_path, monkeypatch):
    model, optimizer, device = _setup()
    monkeypatch.setattr(cache.json, "dump", _full_disk)
    with pytest.warns(RuntimeWarning, match="No space left on device"):
        budget = warppack.calibrate_token_budget(model, optimizer=optimizer, max_seq_len=32, memory=device,
                                                 cache_dir=tmp_path, tolerance=0.3)
    assert budget >= 32 and list(tmp_path.iterdir()) == []
