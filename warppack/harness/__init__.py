"""lm-evaluation-harness backend: ``--model warppack`` scores loglikelihood requests packed.

Importing this package registers the model name with lm-eval (it needs ``pip install lm-eval``).
"""

from warppack.harness.backend import WarpPackLM
from warppack.harness.budget import evaluation_token_budget
from warppack.harness.scoring import score_continuations

__all__ = ["WarpPackLM", "evaluation_token_budget", "score_continuations"]
