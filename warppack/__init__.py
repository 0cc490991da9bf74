"""warppack: padding-free training and evaluation for PyTorch language models.

Sequences are packed densely under a token budget by a C++ bin-packing engine, written into one
contiguous (pinned) buffer, and attended with variable-length attention so no sequence sees
another.

>>> import warppack
>>> p = warppack.plan([5, 3, 8, 2], max_tokens=8)
>>> p.num_bins
3
"""

from warppack._attention import _register_on_import
from warppack._attention import attention_backend, register_attention, set_attention_backend, varlen_attention
from warppack._batch import PackedBatch, unpack
from warppack._collator import PackedCollator
from warppack._lengths import lengths_of
from warppack._planning import Plan, plan
from warppack._version import __version__

__all__ = [
    "attention_backend",
    "register_attention",
    "set_attention_backend",
    "varlen_attention",
    "Plan",
    "PackedBatch",
    "PackedCollator",
    "__version__",
    "lengths_of",
    "plan",
    "unpack",
]

_register_on_import()  # attn_implementation="warppack" once transformers is imported (no import here)
