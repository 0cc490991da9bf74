"""Builds the native extension; metadata lives in pyproject.toml."""

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

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
