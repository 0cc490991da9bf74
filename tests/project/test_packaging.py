"""Building from source: what an old setuptools is told, and a wheel that installs and runs on its own."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import setuptools

REPO = Path(__file__).resolve().parents[2]


def test_setup_py_names_the_setuptools_it_needs(monkeypatch):
    # pyproject.toml's PEP 639 license needs setuptools >= 77; older ones fail with a schema error
    # that does not say so (seen with `pip install --no-build-isolation` in a fresh venv).
    monkeypatch.setattr(setuptools, "__version__", "65.5.0")
    with pytest.raises(SystemExit, match=r"setuptools>=77 .*65\.5\.0.*pip install -U"):
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")


# What a wheel is built from: the package, the engine, and the metadata setuptools reads.
_BUILD_INPUTS = ("warppack", "cpp", "setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")
_OUTSIDE = """
import sys, numpy as np, warppack
site = sys.argv[1]
assert warppack.__file__.startswith(site), f"imported {warppack.__file__}, not the installed wheel under {site}"
plan = warppack.plan([5, 3, 8, 2, 7], max_tokens=8)
batch = warppack.PackedCollator(packing=warppack.PackingConfig(8))([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
assert plan.num_bins == 4 and batch["cu_seq_lens_q"].tolist() == [0, 3, 5]
np.save("lengths.npy", np.array([5, 3, 8, 2, 7, 40, 1]))
print("ok", warppack.__version__)
"""


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(tmp_path):
    """pip wheel, then pip install the wheel into a new venv: import, plan, collate, `warppack stats`."""
    source = tmp_path / "source"
    source.mkdir()
    for name in _BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=_built)
        else:
            shutil.copy2(path, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(wheels), "-q"],
         cwd=source)
    (wheel,) = wheels.glob("warppack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("warppack/_packer.") and n.endswith((".so", ".pyd")) for n in names)
    assert {"warppack/py.typed", "warppack/_packer.pyi", "warppack/engine/config.py"} <= set(names)
    assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    _run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], cwd=tmp_path)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert "ok" in _run([str(python), "-c", _OUTSIDE, site], cwd=outside)
    report = _run([str(bindir / "warppack"), "stats", "lengths.npy", "--max-tokens", "16", "--no-plot"], cwd=outside)
    assert "7 examples, 66 tokens" in report and "budget: 16 tokens per batch" in report


def _built(folder: str, names: list) -> set:
    """Build outputs and caches a fresh checkout does not have."""
    return {n for n in names if n in ("__pycache__", "build") or n.endswith((".so", ".pyd", ".egg-info"))
            or n == "_packer.cpp"}


def _run(command: list, *, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
