"""``import warppack`` and ``import warppack.harness`` import no lm-eval, yet lm-eval finds ``--model warppack``.

Each case runs in a fresh interpreter: what is imported, and in which order, is the point.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from support.paths import REPO

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="pip install 'lm-eval==0.4.*' to test the lm-eval backend")

# Whether lm-eval is imported at all, and whether its Hugging Face backend is.
LOADED = "'lm_eval' in sys.modules, 'lm_eval.models.huggingface' in sys.modules"


def run(code: str) -> list:
    """The lines ``code`` prints, run by a fresh interpreter in the checkout."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_importing_warppack_or_its_harness_loads_no_lm_eval():
    assert run(f"import sys, warppack\nprint({LOADED})\nimport warppack.harness\nprint({LOADED})\n"
               "print(warppack.harness.evaluation_token_budget.__name__)") == \
        ["False False", "False False", "evaluation_token_budget"]


@needs_lm_eval
@pytest.mark.parametrize("first", ["import warppack.harness\nimport lm_eval",
                                   "import lm_eval\nimport warppack.harness",
                                   "import lm_eval.api.registry\nimport warppack.harness"])
def test_the_name_is_registered_whichever_is_imported_first(first):
    # lm-eval's Hugging Face backend (a second of imports) waits until the model is looked up.
    assert run(f"import sys\n{first}\nfrom lm_eval.api.registry import get_model\nprint({LOADED})\n"
               "print(get_model('warppack').__name__, get_model('hf').__name__)") == \
        ["True False", "WarpPackLM HFLM"]


@needs_lm_eval
def test_the_class_registers_itself_and_register_is_idempotent():
    assert run("from warppack.harness import WarpPackLM, register\nregister()\nregister()\n"
               "from lm_eval.api.registry import get_model\n"
               "print(get_model('warppack') is WarpPackLM, get_model('hf').__name__)") == ["True HFLM"]


def test_the_backend_without_lm_eval_names_the_install():
    code = ("import sys\nsys.modules['lm_eval'] = None  # as if lm-eval were not installed\n"
            "import warppack.harness\n"
            "try:\n    warppack.harness.WarpPackLM\nexcept ModuleNotFoundError as error:\n    print(error)")
    (line,) = run(code)
    assert "warppack.harness.WarpPackLM needs lm-eval" in line and "pip install 'warppack[eval]'" in line
