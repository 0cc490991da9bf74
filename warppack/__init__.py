"""warppack: padding-free training and evaluation for PyTorch language models.

Sequences are packed densely under a token budget by a C++ bin-packing engine, written into one
contiguous (pinned) buffer, and attended with variable-length attention so no sequence sees
another.

>>> import warppack
>>> p = warppack.plan([5, 3, 8, 2], max_tokens=8)
>>> p.num_bins
3
"""

from warppack._version import __version__
from warppack.attention.dispatch import (
    attention_backend,
    set_attention_backend,
    varlen_attention,
)
from warppack.attention.hf import register_attention
from warppack.batch.collator import PackedCollator
from warppack.batch.packed import PackedBatch, unpack
from warppack.distributed import equal_steps, global_num_label_tokens
from warppack.engine.config import PackingConfig
from warppack.engine.lengths import lengths_of
from warppack.engine.plan import Plan, plan
from warppack.hf_trainer.lazy import __getattr__  # noqa: F401  (WarpPackCallback, pack_trainer: PEP 562)
from warppack.loaders.sampler.sampler import PackedBatchSampler
from warppack.loaders.stream.dataset import PackedIterableDataset
from warppack.memory.calibrate import calibrate_token_budget
from warppack.memory.oom_guard import OOMGuard
from warppack.model.check import ContaminationError, check_model
from warppack.model.evaluation import (
    SequenceScore,
    evaluate_packed,
    loglikelihood,
    loglikelihood_example,
    pool_sequences,
    score_sequences,
)
from warppack.model.loss import causal_lm_loss, sequence_losses, sequence_weighted_loss

__all__ = [
    "ContaminationError",
    "OOMGuard",
    "PackedBatch",
    "PackedBatchSampler",
    "PackedCollator",
    "PackedIterableDataset",
    "PackingConfig",
    "Plan",
    "SequenceScore",
    "WarpPackCallback",
    "__version__",
    "attention_backend",
    "calibrate_token_budget",
    "causal_lm_loss",
    "check_model",
    "equal_steps",
    "evaluate_packed",
    "global_num_label_tokens",
    "lengths_of",
    "loglikelihood",
    "loglikelihood_example",
    "pack_trainer",
    "plan",
    "pool_sequences",
    "register_attention",
    "score_sequences",
    "sequence_losses",
    "sequence_weighted_loss",
    "set_attention_backend",
    "unpack",
    "varlen_attention",
]
