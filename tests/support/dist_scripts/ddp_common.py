"""The tiny model and data shared by ddp_train.py and its single-process reference in test_distributed.py."""

import numpy as np
import torch

from warppack.batch.packed import MODEL_KEYS  # the PackedBatch keys the model takes (labels go to the loss)

__all__ = ["MODEL_KEYS", "make_data", "make_model"]


def make_data(n: int = 45, seed: int = 0):
    """``n`` examples of 2-40 tokens (vocab 3..95), each carrying its index."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 41, size=n)
    examples = []
    for i, length in enumerate(lengths.tolist()):
        ids = rng.integers(3, 96, size=length)
        labels = ids.copy()
        labels[rng.random(length) < 0.25] = -100  # some ignored labels: counts differ from token counts
        examples.append({"input_ids": ids, "labels": labels, "idx": i})
    return examples, lengths


def make_model():
    """A 2-layer, hidden-32 Llama with warppack's varlen attention (exact per sequence on CPU), fp32."""
    import transformers

    import warppack  # noqa: F401  (registers attn_implementation="warppack")

    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=0, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float()
    model.set_attn_implementation("warppack")
    return model.train()
