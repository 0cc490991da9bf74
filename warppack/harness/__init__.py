"""lm-evaluation-harness backend: ``--model warppack`` scores loglikelihood requests packed.

Importing this package imports no lm-eval: ``warppack`` joins lm-eval's model registry when lm-eval
creates it, and ``WarpPackLM`` (which needs ``pip install lm-eval``) is imported on first use.
"""

from warppack.harness.budget import evaluation_token_budget
from warppack.harness.registration import __getattr__, register  # noqa: F401  (__getattr__: WarpPackLM, PEP 562)

__all__ = ["WarpPackLM", "evaluation_token_budget", "register"]
