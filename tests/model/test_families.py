"""attn_implementation="warppack" on real transformers families (tiny random init, CPU, fp32).

Packed ≡ unpacked: every sequence's logits, the token-weighted loss and every parameter gradient
equal what each sequence gives alone (reference: transformers' eager attention, one at a time).
"""

import pytest
import torch

import warppack
from support.models import FAMILIES, random_sequences, relative_error, tiny_model

pytest.importorskip("transformers")

BUDGET = 16
# Lengths include 1 and a sequence at the budget (alone in its batch).
BATCHES = [[3, 1, 12], [BUDGET]]


def unpacked_reference(model, seqs):
    """Logits of each sequence alone, the token-weighted mean loss, and its gradients."""
    model.zero_grad()
    model.set_attn_implementation("eager")
    logits, total, count = [], 0.0, sum(len(s) - 1 for s in seqs)
    for seq in seqs:
        out = model(input_ids=seq[None], labels=seq[None])
        logits.append(out.logits[0].detach())
        if len(seq) > 1:  # a 1-token sequence has no label to predict
            total = total + out.loss * (len(seq) - 1) / count
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.set_attn_implementation("warppack")
    return torch.cat(logits), total.detach(), grads


@pytest.mark.parametrize("static_shape", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_equals_each_sequence_alone(family, static_shape):
    model = tiny_model(family)
    collate = warppack.PackedCollator(BUDGET, static_shape=static_shape, max_sequences=4)
    for lengths in BATCHES:
        seqs = random_sequences(lengths)
        ref_logits, ref_loss, ref_grads = unpacked_reference(model, seqs)
        batch = collate([{"input_ids": s} for s in seqs])
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        assert warppack.attention_backend() == "exact_segments"
        logits = out.logits[0, : sum(lengths)].detach()
        assert relative_error(logits, ref_logits) < 1e-5, family
        torch.testing.assert_close(out.loss.detach(), ref_loss, rtol=1e-5, atol=1e-6)
        worst = max(relative_error(p.grad, ref_grads[n]) for n, p in model.named_parameters() if n in ref_grads)
        assert worst < 1e-4, f"{family}: gradient relative error {worst:.2e}"


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gpt_oss"])
def test_padded_batches_and_generation_still_exact(family):
    """Ordinary batches (left padding + 2-D mask) and KV-cache generation past the sliding window."""
    model = tiny_model(family)
    seqs = random_sequences([7, 4])
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, 7 - len(seq):], mask[row, 7 - len(seq):] = seq, 1
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        assert warppack.attention_backend() == "exact_masked"
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        model.set_attn_implementation("eager")
        expected = model(input_ids=ids, attention_mask=mask).logits
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    real = mask.bool()
    assert relative_error(got[real], expected[real]) < 1e-5
    assert torch.equal(generated, reference)


# ---- loss semantics ------------------------------------------------------------------------------------------
def test_token_weighted_loss_and_num_items_in_batch_under_accumulation():
    """Two micro-batches with num_items_in_batch sum to the token mean over the whole step."""
    model = tiny_model("llama")
    collate = warppack.PackedCollator(BUDGET)
    micro = [random_sequences([5, 9], seed=1), random_sequences([2, 13, 1], seed=2)]
    everything = [s for seqs in micro for s in seqs]
    _, ref_loss, ref_grads = unpacked_reference(model, everything)
    batches = [collate([{"input_ids": s} for s in seqs]) for seqs in micro]
    num_items = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert num_items == sum(len(s) - 1 for s in everything)  # shifted or not: first labels are ignored
    model.zero_grad()
    step_loss = 0.0
    for batch in batches:
        out = model(**batch, num_items_in_batch=num_items)
        ours = warppack.causal_lm_loss(out.logits, batch["labels"], num_items_in_batch=num_items)
        torch.testing.assert_close(ours, out.loss, rtol=1e-6, atol=1e-7)
        out.loss.backward()
        step_loss += out.loss.detach()
    torch.testing.assert_close(step_loss, ref_loss, rtol=1e-5, atol=1e-6)
    worst = max(relative_error(p.grad, ref_grads[n]) for n, p in model.named_parameters() if n in ref_grads)
    assert worst < 1e-4


def test_per_sequence_losses_and_sequence_weighting():
    model = tiny_model("qwen3")
    seqs = random_sequences([4, 1, 11], seed=3)
    batch = warppack.PackedCollator(BUDGET, static_shape=True, max_sequences=4)([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        logits = model(**batch).logits
        alone = [model(input_ids=s[None], labels=s[None]).loss for s in seqs]
    sums, counts = warppack.sequence_losses(logits, batch["labels"], batch["cu_seq_lens_q"])
    assert counts.tolist()[:3] == [3.0, 0.0, 10.0] and counts[3:].sum() == 0  # padding/empty tail: 0
    torch.testing.assert_close(sums[[0, 2]] / counts[[0, 2]], torch.stack([alone[0], alone[2]]), rtol=1e-5, atol=1e-6)
    equal = warppack.sequence_weighted_loss(logits, batch["labels"], batch["cu_seq_lens_q"])
    torch.testing.assert_close(equal, (alone[0] + alone[2]) / 2, rtol=1e-5, atol=1e-6)
    weights = torch.tensor([3.0, 5.0, 1.0, 7.0, 7.0])  # ignored where a segment has no labels
    weighted = warppack.sequence_weighted_loss(logits, batch["labels"], batch["cu_seq_lens_q"], weights=weights)
    torch.testing.assert_close(weighted, (3 * alone[0] + alone[2]) / 4, rtol=1e-5, atol=1e-6)
