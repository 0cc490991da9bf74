"""The end-to-end benchmarks start, run every arm, and agree on the loss (CPU smoke mode).

The benchmarks themselves run on the GPU (benchmarks/bench_train.py, issue 6); CI only checks that
they start: a tiny model, a few dozen sequences, one step per arm. Also checked here, without a GPU:
the largest-batch search against a simulated memory model (including an out-of-memory retry), and
the vectorised worst-batch computation against the plain one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import _train_common as C  # noqa: E402
import bench_train  # noqa: E402

HAS_TRL = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("pyarrow") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_smoke")
    assert bench_train.main(["--smoke", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_smoke_runs_every_arm_on_both_distributions(smoke):
    out, res = smoke
    assert set(res["train"]) == {"sft", "wiki"}
    for dist, d in res["train"].items():
        for key in "1234567":
            arm = d["arms"][key]
            if key == "5" and not HAS_TRL:
                assert "error" in arm
                continue
            assert "error" not in arm, (dist, key, arm.get("error"))
            assert arm["real_tokens_per_s"] > 0
            assert arm["oom_search"] == arm["oom_timed"] == 0
            assert len(arm["windows"]) >= 1
        # padding only where the batching pads
        assert d["arms"]["1"]["epoch"]["padding_fraction"] > 0
        for key in ("4", "6", "7"):
            assert d["arms"][key]["epoch"]["padding_fraction"] == 0
        assert set(d["targets"]) and all(t["result"] in ("PASS", "FAIL") for t in d["targets"].values())
    assert (out / "results.md").read_text().count("| 7 | compute-only bound |") == 2
    if HAS_MPL:
        assert {"train_throughput.png", "eval_throughput.png"} <= {p.name for p in out.glob("*.png")}


def test_every_arm_gives_the_same_loss_on_the_same_examples(smoke):
    # Padded rows with sdpa, flattened/packed rows through warppack's attention, TRL's packed rows:
    # the same label tokens, the same token-mean loss (fp32 on CPU).
    _, res = smoke
    for dist, d in res["train"].items():
        cons = d["consistency"]
        assert cons["ok"], (dist, cons)
        expected = {"1", "2", "3", "4", "6"} | ({"5"} if HAS_TRL else set())
        assert expected <= set(cons["loss"])
        assert cons["max_rel_dev"] < 1e-4


def test_smoke_pipeline_and_eval_sections(smoke):
    _, res = smoke
    for dist in ("sft", "wiki"):
        p = res["pipeline"][dist]
        assert set(p["configs"]) == {"num_workers=0", "num_workers=2"}
        for cfg in p["configs"].values():
            assert cfg["wall_s"] > 0 and cfg["data_share"] >= 0
        e = res["eval"][dist]
        assert set(e["arms"]) == {"packed", "padded", "dynamic"}
        assert all(a["real_tokens_per_s"] > 0 for a in e["arms"].values())
        assert e["padding_removal_limit"] > 1
    assert res["meta"]["smoke"] is True


def test_chunked_worst_matches_plain_worst():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 300, 257)
    order = rng.permutation(len(lengths))
    for mode, slot in (("pad", lambda b: len(b) * 300), ("longest", lambda b: len(b) * int(lengths[b].max())),
                       ("sum", lambda b: int(lengths[b].sum()))):
        fast = C.chunked_worst(lambda b: order, lengths, mode, 300)
        for b in (1, 2, 7, 64, 256, 257, 400):
            plain = [slot(order[i: i + b]) for i in range(0, len(order), b)]
            assert fast(b) == (int(np.argmax(plain)), max(plain)), (mode, b)


class _FakeCtx:
    def __init__(self, cap):
        self.cap = cap
        self.smoke = False
        self.device = None


def test_largest_batch_search_against_a_simulated_memory(monkeypatch):
    # Simulated device: peak = 3 GB + 1.5 MB per slot token; really out of memory above 93% of the cap
    # the search aims at (so the first prediction fails once and the search must shrink and retry).
    fixed, per_token, cap = 3e9, 1.5e6, 60e9
    hard = 0.93 * cap

    def fake_probe(ctx, model, opt, arm, size):
        _, slot = arm.worst(size)
        peak = fixed + per_token * slot
        return peak <= hard, slot, int(peak), 0.01

    monkeypatch.setattr(bench_train, "_probe", fake_probe)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.7, 1.0, 4000), 1, 4096).astype(np.int64)
    tokens = np.arange(int(lengths.sum()), dtype=np.int64) % 500 + 3
    ds = C.TokenDataset(lengths, tokens)
    arms = C.build_arms(["1", "2", "4", "6"], lengths=lengths, max_len=4096, dataset=ds, trl=None, seed=0,
                        log=lambda *a: None)
    most = (hard - fixed) / per_token  # slot tokens that really fit
    for key, arm in arms.items():
        res = {"oom_search": 0}
        size = bench_train.search_size(_FakeCtx(cap), None, None, arm, res)
        _, slot = arm.worst(size)
        assert slot <= most, (key, size, slot)
        if key in ("1", "6"):  # the first prediction overshoots the simulated device: one retry
            assert res["oom_search"] >= 1, key
            assert slot >= 0.85 * most - 4096, (key, slot, most)
        assert res["worst_batch"]["slot_tokens"] == slot


@pytest.mark.skipif(not HAS_TRL, reason="trl / pyarrow not installed")
def test_trl_arm_runs_without_datasets():
    # On the device `datasets` might not import; TRL's own code must still run with the stand-in module.
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import _train_common as C, numpy as np\n"
        "trl = C.load_trl()\n"
        "assert 'stand-in' in trl['mode'], trl['mode']\n"
        "assert type(sys.modules['datasets']).__name__ == 'module' and sys.modules['datasets'].__version__.endswith('stub')\n"
        "ds = C.TokenDataset(np.array([5, 3, 8, 2]), np.arange(18) + 3)\n"
        "rows, row_lengths, _ = C.trl_bfd_rows(trl, ds, 8)\n"
        "assert sorted(row_lengths.tolist()) == [2, 8, 8], row_lengths\n"
        "b = trl['collator_cls'](pad_token_id=0, padding_free=True)([rows[i] for i in range(len(rows))])\n"
        "assert b['input_ids'].shape == (1, 18) and b['cu_seq_lens_q'].tolist()[-1] == 18\n"
        "assert int((b['labels'] == -100).sum()) == 4\n"
        "print('ok')\n" % str(BENCH)
    )
    env = dict(os.environ, BENCH_FORCE_DATASETS_STUB="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_compare_runs_medians_and_refusals(smoke, tmp_path):
    import compare_runs

    out, res = smoke
    other = json.loads(json.dumps(res))
    for dist in other["train"]:
        for arm in other["train"][dist]["arms"].values():
            if arm.get("real_tokens_per_s"):
                arm["real_tokens_per_s"] *= 3.0
    (tmp_path / "b.json").write_text(json.dumps(other))
    (tmp_path / "c.json").write_text(json.dumps(other))
    runs = compare_runs.load_runs([out / "results.json", tmp_path / "b.json", tmp_path / "c.json"])
    for dist in res["train"]:
        arms = compare_runs.median_arms(runs, dist)
        for key, arm in res["train"][dist]["arms"].items():
            if arm.get("real_tokens_per_s"):
                assert arms[key]["real_tokens_per_s"] == pytest.approx(3.0 * arm["real_tokens_per_s"])
                assert len(arms[key]["runs"]) == 3
    text = compare_runs.report(runs, ["a", "b", "c"])
    assert text.count("| 7 | compute-only bound |") == 2 and "ceiling:" in text

    other["meta"]["torch"] = "0.0"
    (tmp_path / "d.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="one software stack"):
        compare_runs.load_runs([out / "results.json", tmp_path / "d.json"])
    (tmp_path / "e.json").write_text("{")
    with pytest.raises(SystemExit, match="cannot read"):
        compare_runs.load_runs([tmp_path / "e.json"])
