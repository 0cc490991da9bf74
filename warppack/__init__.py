"""warppack: padding-free training and evaluation for PyTorch language models.

Sequences are packed densely under a token budget by a C++ bin-packing engine, written into one
contiguous (pinned) buffer, and attended with variable-length attention so no sequence sees
another.

>>> import warppack
>>> p = warppack.plan([5, 3, 8, 2], max_tokens=8)
>>> p.num_bins
3
"""

from warppack._attention import attention_backend, set_attention_backend, varlen_attention
from warppack._attention_transformers import _register_on_import, register_attention
from warppack._batch import PackedBatch, unpack
from warppack._calibration import calibrate_token_budget
from warppack._oom import OOMGuard
from warppack._check import ContaminationError, check_model
from warppack._evaluation import SequenceScore, evaluate_packed, loglikelihood, loglikelihood_example
from warppack._evaluation import pool_sequences, score_sequences
from warppack._loss import causal_lm_loss, sequence_losses, sequence_weighted_loss
from warppack._collator import PackedCollator
from warppack._distributed import equal_steps, global_num_label_tokens
from warppack._iterable import PackedIterableDataset
from warppack._sampler import PackedBatchSampler
from warppack._lengths import lengths_of
from warppack._planning import Plan, plan
from warppack._version import __version__

__all__ = [
    "attention_backend",
    "register_attention",
    "set_attention_backend",
    "varlen_attention",
    "ContaminationError",
    "check_model",
    "SequenceScore",
    "evaluate_packed",
    "loglikelihood",
    "loglikelihood_example",
    "pool_sequences",
    "score_sequences",
    "causal_lm_loss",
    "sequence_losses",
    "sequence_weighted_loss",
    "Plan",
    "PackedBatch",
    "PackedCollator",
    "PackedBatchSampler",
    "PackedIterableDataset",
    "equal_steps",
    "global_num_label_tokens",
    "calibrate_token_budget",
    "OOMGuard",
    "WarpPackCallback",
    "pack_trainer",
    "__version__",
    "lengths_of",
    "plan",
    "unpack",
]


def __getattr__(name):  # the Trainer integration imports transformers: only when it is asked for
    if name in ("WarpPackCallback", "pack_trainer"):
        from warppack import _callback

        return getattr(_callback, name)
    raise AttributeError(f"module 'warppack' has no attribute {name!r}")


_register_on_import()  # attn_implementation="warppack" once transformers is imported (no import here)
