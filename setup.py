"""Builds the native extension; metadata lives in pyproject.toml."""

import os
import re
import sys

import setuptools

# pyproject.toml states the license as a PEP 639 expression, which setuptools < 77 rejects with a
# schema error that does not say what to do. An isolated build fetches a new enough setuptools; a
# build with --no-build-isolation uses whatever the environment has, so say so plainly.
_SETUPTOOLS = tuple(int(part) for part in re.findall(r"\d+", setuptools.__version__)[:2])
if _SETUPTOOLS < (77, 0):
    sys.exit(
        f"warppack needs setuptools>=77 to build (this environment has {setuptools.__version__}): "
        f"run `pip install -U 'setuptools>=77'`, or build without --no-build-isolation"
    )

import numpy  # noqa: E402
from Cython.Build import cythonize  # noqa: E402
from setuptools import Extension, setup  # noqa: E402

CPP_SOURCES = ["cpp/planner.cpp", "cpp/whole.cpp", "cpp/online.cpp", "cpp/layout.cpp"]


def _compile_args():
    if sys.platform == "win32":
        return ["/O2", "/std:c++17"]
    args = ["-O3", "-std=c++17", "-fvisibility=hidden"]
    # WARPPACK_SANITIZE=address builds the engine with AddressSanitizer (see scripts/asan.sh).
    if os.environ.get("WARPPACK_SANITIZE") == "address":
        args = ["-O1", "-g", "-std=c++17", "-fsanitize=address", "-fno-omit-frame-pointer"]
    return args


def _link_args():
    if os.environ.get("WARPPACK_SANITIZE") == "address":
        return ["-fsanitize=address"]
    return []


extension = Extension(
    "warppack._packer",
    sources=["warppack/_packer.pyx", *CPP_SOURCES],
    include_dirs=["cpp", numpy.get_include()],
    language="c++",
    extra_compile_args=_compile_args(),
    extra_link_args=_link_args(),
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
