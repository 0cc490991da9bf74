"""The token budget of packed evaluation: given, measured (on a simulated GPU here), or the model's length."""

from __future__ import annotations

import pytest
import torch

from warppack.harness.budget import evaluation_step, evaluation_token_budget
from warppack.memory.search import pessimistic_lengths

pytest.importorskip("transformers")
from support.models import tiny_model  # noqa: E402
from support.simulated_device import SimulatedDevice  # noqa: E402


def test_given_or_default_budget():
    model = tiny_model("llama")
    assert evaluation_token_budget(model, max_tokens=4096, max_length=64, device="cpu") == 4096
    assert evaluation_token_budget(model, max_tokens=None, max_length=64, device="cpu") == 64  # not CUDA


@pytest.mark.parametrize("value, error, message", [
    ("lots", ValueError, r"max_tokens='lots': pass a token count such as max_tokens=16384, or max_tokens=auto"),
    (0, ValueError, r"max_tokens must be > 0, got 0"),
    (True, TypeError, r"max_tokens must be a positive int, got True"),
    (2.5, TypeError, r"max_tokens must be a positive int, got 2.5"),
])
def test_bad_budgets_are_named(value, error, message):
    with pytest.raises(error, match=message):
        evaluation_token_budget(tiny_model("llama"), max_tokens=value, max_length=64, device="cpu")


def test_auto_needs_a_gpu_to_measure():
    with pytest.raises(RuntimeError, match="warppack measures memory on a CUDA device"):
        evaluation_token_budget(tiny_model("llama"), max_tokens="auto", max_length=64, device="cpu")


def test_auto_measures_forward_only_evaluation_batches():
    model = tiny_model("llama")
    device = SimulatedDevice(total_bytes=20_000, per_token=10.0, per_square=0.05).attach(model)
    budget = evaluation_token_budget(model, max_tokens="auto", max_length=64, device="cpu", memory=device, cache=False)
    best = device.best_budget(64, headroom=0.08)
    assert best / 1.05 <= budget <= best
    assert all(device.need(lengths) <= 0.92 * device.total_bytes for lengths in pessimistic_lengths(budget, 64))
    assert all(p.grad is None for p in model.parameters())  # no backward reached the model


def test_evaluation_step_is_a_forward_without_gradients():
    model = tiny_model("llama")
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]]), "position_ids": torch.tensor([[0, 1, 2, 0, 1]]),
             "cu_seq_lens_q": torch.tensor([0, 3, 5], dtype=torch.int32), "max_length_q": 3, "max_length_k": 3,
             "labels": torch.tensor([[-100, 6, 7, -100, 9]])}
    batch["cu_seq_lens_k"] = batch["cu_seq_lens_q"]
    loss = evaluation_step(model, batch)
    assert loss.item() == 0 and loss.requires_grad and loss.grad_fn is None
