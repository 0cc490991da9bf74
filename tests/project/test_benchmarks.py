"""The benchmarks start, run every arm, and agree on the loss (CPU smoke mode).

The benchmarks measure on the GPU; here they run as a user runs them (``python benchmarks/x.py``)
in their smoke modes: a tiny model, a few dozen sequences, one step per arm. Their shared module,
``benchmarks/benchlib``, is loaded by path for the checks that need no GPU: the largest-batch
search against a simulated memory model (including an out-of-memory retry), the vectorised
worst-batch computation against the plain one, the adversarial streams and the simulated memory.
"""

from __future__ import annotations

import ast
import importlib
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
SCRIPTS = sorted(BENCH.glob("*.py"))

from support.paths import benchlib  # noqa: E402

HAS_TRL = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("pyarrow") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def run_script(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_smoke")
    done = run_script(str(BENCH / "bench_train.py"), "--smoke", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def _imports(script: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_a_benchmark_imports_no_other_benchmark_nor_the_tests(script):
    # The scripts share code through benchlib only, and find warppack installed, not on a patched path.
    text = script.read_text()
    assert "sys.path" not in text, f"{script.name} edits sys.path"
    peers = {p.stem for p in SCRIPTS} | {"support", "tests", "conftest"}
    assert not _imports(script) & peers, f"{script.name} imports {sorted(_imports(script) & peers)}"


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


def test_compare_runs_medians_and_refusals(smoke, tmp_path):
    out, res = smoke
    other = json.loads(json.dumps(res))
    for dist in other["train"]:
        for arm in other["train"][dist]["arms"].values():
            if arm.get("real_tokens_per_s"):
                arm["real_tokens_per_s"] *= 3.0
    (tmp_path / "b.json").write_text(json.dumps(other))
    (tmp_path / "c.json").write_text(json.dumps(other))
    compare = str(BENCH / "compare_runs.py")
    done = run_script(compare, str(out / "results.json"), str(tmp_path / "b.json"), str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.count("| 7 | compute-only bound |") == 2 and "ceiling:" in text
    sft = text[text.index("## sft"):text.index("## wiki")]
    for key, arm in res["train"]["sft"]["arms"].items():
        if arm.get("real_tokens_per_s"):
            row = next(line for line in sft.splitlines() if line.startswith(f"| {key} |"))
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[3:6] == [f"{v:,.0f}" for v in (arm["real_tokens_per_s"], 3 * arm["real_tokens_per_s"],
                                                         3 * arm["real_tokens_per_s"])], row
            assert cells[6] == f"{3 * arm['real_tokens_per_s']:,.0f}", row  # the median of the three runs

    other["meta"]["torch"] = "0.0"
    (tmp_path / "d.json").write_text(json.dumps(other))
    done = run_script(compare, str(out / "results.json"), str(tmp_path / "d.json"))
    assert done.returncode != 0 and "one software stack" in done.stderr
    (tmp_path / "e.json").write_text("{")
    done = run_script(compare, str(tmp_path / "e.json"))
    assert done.returncode != 0 and "cannot read" in done.stderr


def test_chunked_worst_matches_plain_worst():
    arms = benchlib("arms")
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 300, 257)
    order = rng.permutation(len(lengths))
    for mode, slot in (("pad", lambda b: len(b) * 300), ("longest", lambda b: len(b) * int(lengths[b].max())),
                       ("sum", lambda b: int(lengths[b].sum()))):
        fast = arms.chunked_worst(lambda b: order, lengths, mode, 300)
        for b in (1, 2, 7, 64, 256, 257, 400):
            plain = [slot(order[i: i + b]) for i in range(0, len(order), b)]
            assert fast(b) == (int(np.argmax(plain)), max(plain)), (mode, b)


def test_largest_batch_search_against_a_simulated_memory():
    # Simulated device: peak = 3 GB + 1.5 MB per slot token; really out of memory above 93% of the cap
    # the search aims at (so the first prediction fails once and the search must shrink and retry).
    arms, sizing, tokens = benchlib("arms"), benchlib("sizing"), benchlib("tokens")
    fixed, per_token, cap = 3e9, 1.5e6, 60e9
    hard = 0.93 * cap
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.7, 1.0, 4000), 1, 4096).astype(np.int64)
    ds = tokens.TokenDataset(lengths, np.arange(int(lengths.sum()), dtype=np.int64) % 500 + 3)
    built = arms.build_arms(["1", "2", "4", "6"], lengths=lengths, max_len=4096, dataset=ds, trl=None, seed=0,
                            log=lambda *a: None)
    most = (hard - fixed) / per_token  # slot tokens that really fit
    for key, arm in built.items():

        def probe(size, arm=arm):
            _, slot = arm.worst(size)
            peak = fixed + per_token * slot
            return peak <= hard, slot, int(peak), 0.01

        res = {"oom_search": 0}
        size = sizing.largest_size(arm, probe, int(cap), res)
        _, slot = arm.worst(size)
        assert slot <= most, (key, size, slot)
        if key in ("1", "6"):  # the first prediction overshoots the simulated device: one retry
            assert res["oom_search"] >= 1, key
            assert slot >= 0.85 * most - 4096, (key, slot, most)
        assert res["worst_batch"]["slot_tokens"] == slot


def test_adversarial_streams_fill_the_budget_and_keep_their_shapes():
    streams = benchlib("calibration").adversarial_batches(4000, 1024, 3)
    assert list(streams) == ["all_max_seq_len", "all_tiny", "bimodal"]
    for name, batches in streams.items():
        assert 1 <= len(batches) <= 3, name
        assert all(sum(b) <= 4000 and max(b) <= 1024 for b in batches), name
    assert all(set(b) == {1024} for b in streams["all_max_seq_len"])
    assert all(max(b) <= 32 for b in streams["all_tiny"])
    # whole long sequences leave a bin short of the budget, tiny ones fill it: the growth that fragments
    assert sum(streams["all_max_seq_len"][0]) == 3 * 1024 < sum(streams["all_tiny"][0])


def test_simulated_memory_fails_like_a_gpu_and_accelerate_shrinks_on_it():
    torch = pytest.importorskip("torch")
    memory = benchlib("calibration").SimulatedMemory(total_bytes=1000, static_bytes=100, per_token=10, per_square=0)

    class Model(torch.nn.Module):
        def forward(self, **batch):
            return batch

    layer = Model()
    memory.attach(layer)
    layer(input_ids=torch.zeros(2, 20))  # 100 + 10 * 40 bytes
    assert memory.peak_bytes() == 500
    with pytest.raises(torch.OutOfMemoryError) as raised:
        layer(input_ids=torch.zeros(4, 40))
    memory.cap(400)
    with pytest.raises(torch.OutOfMemoryError):
        layer(input_ids=torch.zeros(2, 20))
    memory.uncap()
    layer(input_ids=torch.zeros(2, 20))
    accelerate = pytest.importorskip("accelerate.utils.memory")
    assert accelerate.should_reduce_batch_size(raised.value)


@pytest.mark.skipif(not HAS_TRL, reason="trl / pyarrow not installed")
def test_trl_arm_runs_without_datasets():
    # Where `datasets` does not import, TRL's own code must still run with the stand-in module.
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from benchlib.peers import load_trl, trl_bfd_rows\n"
        "from benchlib.tokens import TokenDataset\n"
        "trl = load_trl()\n"
        "assert 'stand-in' in trl['mode'], trl['mode']\n"
        "stub = sys.modules['datasets']\n"
        "assert type(stub).__name__ == 'module' and stub.__version__.endswith('stub')\n"
        "ds = TokenDataset(np.array([5, 3, 8, 2]), np.arange(18) + 3)\n"
        "rows, row_lengths, _ = trl_bfd_rows(trl, ds, 8)\n"
        "assert sorted(row_lengths.tolist()) == [2, 8, 8], row_lengths\n"
        "b = trl['collator_cls'](pad_token_id=0, padding_free=True)([rows[i] for i in range(len(rows))])\n"
        "assert b['input_ids'].shape == (1, 18) and b['cu_seq_lens_q'].tolist()[-1] == 18\n"
        "assert int((b['labels'] == -100).sum()) == 4\n"
        "print('ok')\n"
    )
    env = dict(os.environ, BENCH_FORCE_DATASETS_STUB="1")
    # run from benchmarks/, as a script there runs: benchlib imports by its bare name
    done = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_training_streams_add_an_sft_mix_and_the_real_lengths_within_the_budget():
    streams = benchlib("calibration").training_streams(6000, 1024, 2)
    assert list(streams) == ["all_max_seq_len", "all_tiny", "bimodal", "lognormal", "real"]
    for name, batches in streams.items():
        assert 1 <= len(batches) <= 2 and all(0 < sum(b) <= 6000 and 0 < min(b) and max(b) <= 1024 for b in batches), name
    assert len({n for b in streams["real"] for n in b}) > 2  # real lengths vary, unlike the synthetic shapes


def test_the_calibration_matrix_varies_what_changes_training_memory():
    torch = pytest.importorskip("torch")
    matrix = benchlib("matrix")
    configs = matrix.MATRIX.values()
    vocab = {c.config["vocab_size"] // 1000 for c in configs}
    assert {32, 128, 151} <= vocab
    hidden = [c.config["hidden_size"] for c in configs]
    depth = [c.config["num_hidden_layers"] for c in configs]
    assert min(hidden) <= 896 and max(hidden) >= 4096 and min(depth) <= 12 and max(depth) >= 36
    gqa = {c.config["num_attention_heads"] // c.config["num_key_value_heads"] for c in configs}
    assert {1, 4, 8} <= gqa
    assert {bool(c.config.get("tie_word_embeddings")) for c in configs} == {True, False}
    assert {c.checkpointing for c in configs} == {True, False} and any(c.lora for c in configs)
    assert len({c.family for c in configs} - {"Llama"}) >= 2
    params = sum(p.numel() for p in matrix.build(matrix.MATRIX["llama-3.2b-ckpt"], device=torch.device("meta"),
                                                  dtype=torch.bfloat16, max_positions=4096).parameters())
    assert params >= 3e9, params


def test_state_fingerprint_sees_a_changed_weight_flag_optimizer_and_rng():
    torch = pytest.importorskip("torch")
    matrix = benchlib("matrix")
    model = matrix.build(matrix.SMOKE["tiny-llama-lora"], device=torch.device("cpu"), dtype=torch.float32,
                         max_positions=64)
    optimizer = torch.optim.AdamW(matrix.trainable(model), lr=1e-3)
    before = matrix.state_fingerprint(model, optimizer)
    assert matrix.changed(before, matrix.state_fingerprint(model, optimizer)) == []
    with torch.no_grad():
        next(iter(matrix.trainable(model))).add_(1e-3)
    torch.rand(1)
    model.eval()
    assert set(matrix.changed(before, matrix.state_fingerprint(model, optimizer))) == {"weights", "training",
                                                                                      "cpu_rng"}



def test_the_loglikelihood_benchmark_runs_every_arm_to_the_same_scores():
    done = run_script(str(BENCH / "bench_loglikelihood.py"), "--contexts", "3", "--choices", "2", "--repeats", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {line.split()[0] for line in done.stdout.splitlines()[2:5]}
    assert rows == {"padded", "packed", "loglikelihood"}
    worst = float(done.stdout.rsplit(":", 1)[1])
    assert worst < 1e-4
