"""Run a script of ``dist_scripts/`` on N gloo processes with ``python -m torch.distributed.run``."""

import os
import subprocess
import sys
from pathlib import Path

from support.paths import DIST_SCRIPTS, REPO, TESTS


def torchrun(script: str, nproc: int, out: Path, *, timeout: int = 420) -> None:
    """``dist_scripts/<script> <out>`` on ``nproc`` ranks (``--standalone``: a free port, no clash with parallel runs).

    Fails with the end of both output streams; the scripts write their results into ``out``.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), str(TESTS / "support"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(DIST_SCRIPTS / script), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    assert done.returncode == 0, f"{script} on {nproc} ranks failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
