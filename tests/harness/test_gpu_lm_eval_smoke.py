"""The GPU lm-eval benchmark runs end to end in its CPU smoke mode (``benchmarks/gpu_lm_eval.py --smoke``).

A tiny random Llama and tiny generated tasks: every backend setting answers every task, the report
files are written, and the fp32 exactness phase finds warppack's answers equal to ``--model hf``'s.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval", reason="pip install 'lm-eval==0.4.*' to test the lm-eval backend")

from support.paths import BENCHMARKS, REPO  # noqa: E402


def test_smoke_mode_answers_every_task_with_every_setting_and_the_same_scores(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_lm_eval.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_lm_eval.json").read_text())
    assert set(results["tasks"]) == {"wpb_choice_bench", "wpb_choice_sft", "wpb_perplexity", "wpb_generate"}
    assert results["skipped"] == []
    for task, entry in results["tasks"].items():
        runs = entry["runs"]
        assert set(runs) == {"hf batch_size=auto", "warppack max_tokens=512", "hf batch_size=4", "hf batch_size=16"}
        for label, run in runs.items():
            assert "error" not in run, (task, label, run.get("error"))
            assert run["requests"] == results["task_info"][task]["requests_tokens"]["n"]  # one row per request
            assert math.isfinite(run["request_s"]) and math.isfinite(run["wall_s"])  # reported, not judged
        assert runs["warppack max_tokens=512"]["attention"]  # the kernel warppack's packed batches ran
        assert entry["summary"]["best_hf_fixed"] in ("hf batch_size=4", "hf batch_size=16")
    for task, check in results["exact"].items():
        assert check["result"] == "PASS", (task, check)
    report = (tmp_path / "gpu_lm_eval.md").read_text()
    assert "| warppack max_tokens=512 |" in report and "## Same scores" in report
