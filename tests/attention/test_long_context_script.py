"""benchmarks/gpu_long_context.py runs every phase on CPU (``--smoke``), and a time limit skips work
instead of losing what was measured. The GPU numbers themselves come from the GPU machine."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from warppack.attention import registry

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_long_context.py"


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_smoke_runs_every_phase_and_writes_json_and_markdown(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_long_context.json").read_text())
    assert res["failures"] == [] and res["skipped"] == []
    assert res["baseline"] == "exact_segments" and res["faster"] == ["exact_block_diagonal"]
    assert list(res["kernels"]) == list(registry.ORDER)  # each kernel of the order, and why it runs here or not
    assert res["kernels"]["flash_attn_4"].startswith("it needs CUDA") and res["kernels"]["exact_segments"] == "runs"
    for kernel in ("exact_segments", "exact_block_diagonal"):
        rows = res["checks"][kernel]
        assert {"plain", "window", "softcap", "sinks", "non-causal", "static-tail"} == set(rows)
        assert all(row["ok"] and max(row["alone_max_abs"]) < 1e-5 for row in rows.values())
    scenarios = set(res["batches"])
    assert scenarios == {"16", "32", "64", "mixed SFT"}
    for level in ("attention", "steps"):
        assert scenarios <= set(res[level])
        for scenario in scenarios:
            methods = res[level][scenario]
            assert set(methods) == {"exact_segments", "exact_block_diagonal", "padded_sdpa"}
            assert all(math.isfinite(m["median_s"]) for m in methods.values())  # reported, not judged
            assert methods["exact_block_diagonal"]["kernel"] == "exact_block_diagonal"
    assert all(r["ok"] for family in res["families"].values() for r in family.values())
    assert res["compile"]["automatic"]["graphs"] == 1 and res["compile"]["automatic"]["graph_breaks"] == 0
    page = (tmp_path / "gpu_long_context.md").read_text()
    for heading in ("## Checks", "## Attention forward+backward", "## Training steps", "## Targets",
                    "## Model families and check_model", "## torch.compile"):
        assert heading in page


def test_a_time_limit_skips_units_and_still_writes_the_results(tmp_path):
    done = run(tmp_path, "--time-limit", "0", "--skip", "compile")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_long_context.json").read_text())
    assert "environment" in res and "exact_segments" in res["kernels"]
    assert any(s.startswith("checks ") for s in res["skipped"]) and "steps: model" in res["skipped"]
    assert "compile" not in res["phase_s"]
    assert "skipped for time" in (tmp_path / "gpu_long_context.md").read_text()
