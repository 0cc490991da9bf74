"""torch.compile: static_shape batches keep one graph while the batch composition changes."""

import pytest
import torch

import warppack
from support.models import random_sequences, relative_error, tiny_model

pytest.importorskip("transformers")
dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

BUDGET = 32
# Sequence count, longest sequence (max_length) and padding all change from batch to batch.
COMPOSITIONS = [[5, 9, 3], [BUDGET], [1, 2, 3, 4, 5, 6], [31, 1]]


def run(family, backend, *, backward):
    model = tiny_model(family)
    collate = warppack.PackedCollator(BUDGET, static_shape=True, max_sequences=8)
    counter = CompileCounterWithBackend(backend)
    dynamo.reset()
    compiled = torch.compile(model, backend=counter)
    with dynamo.config.patch(error_on_recompile=True):  # a recompile fails the test right there
        for lengths in COMPOSITIONS:
            batch = collate([{"input_ids": s} for s in random_sequences(lengths)])
            with torch.set_grad_enabled(backward):
                out = compiled(**batch)
                if backward:
                    out.loss.backward()
                expected = model(**batch).logits
            real = sum(lengths)
            assert relative_error(out.logits[0, :real].detach(), expected[0, :real].detach()) < 1e-5
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for {len(COMPOSITIONS)} compositions"


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_no_recompile_as_composition_changes(family):
    run(family, "aot_eager", backward=True)  # dynamo + AOT autograd, the parts that decide recompiles


@pytest.mark.slow
def test_no_recompile_with_inductor():
    run("llama", "inductor", backward=False)  # real codegen on CPU: ~40 s on 2 cores
