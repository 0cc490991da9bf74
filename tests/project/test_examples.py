"""Every script in examples/ runs end to end in its --tiny CPU mode (so the examples never rot).

Each runs in its own Python process, as a user would run it, against this checkout. A script is
skipped only while a ``warppack`` name it uses is genuinely missing from the package, and the skip
reason names it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import warppack

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))

# what each example must print when it succeeds (beyond exiting 0)
EXPECTED = {
    "train_pytorch.py": "done:",
    "train_accelerate.py": "done:",
    "train_hf_trainer.py": "done:",
    "evaluate_packed.py": "packed vs one by one",
}


def _missing_names(script: Path) -> list:
    names = sorted(set(re.findall(r"\bwarppack\.([A-Za-z_]\w*)", script.read_text())))
    missing = []
    for name in names:
        try:
            getattr(warppack, name)
        except Exception:  # AttributeError, or the lazy import of a module that is not there yet
            missing.append(name)
    return missing


def test_every_example_is_listed():
    assert EXAMPLES, "examples/ holds no scripts"
    assert {p.name for p in EXAMPLES} == set(EXPECTED), "add the new example to EXPECTED"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_tiny_mode(script: Path, tmp_path: Path):
    missing = _missing_names(script)
    if missing:
        pytest.skip(f"examples/{script.name} uses warppack.{', warppack.'.join(missing)}, not in warppack yet")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ,
        PYTHONPATH=path,
        CUDA_VISIBLE_DEVICES="",  # --tiny means CPU, even on a GPU machine
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
        WANDB_DISABLED="true",
        HF_HUB_OFFLINE="1",
    )
    run = subprocess.run(
        [sys.executable, str(script), "--tiny"],
        cwd=tmp_path,  # examples must not depend on the working directory (or litter the checkout)
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, f"examples/{script.name} --tiny failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert EXPECTED[script.name] in run.stdout, run.stdout[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-5000:]
