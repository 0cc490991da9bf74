"""Packed evaluation: results in dataset order, each example exactly once, equal to unpacked scoring."""

import pytest
import torch

import warppack
from support.models import random_sequences, tiny_model
from warppack.model.continuations import score_continuations

pytest.importorskip("transformers")

LENGTHS = [5, 16, 1, 9, 3, 12, 7, 2, 15, 4, 8, 6, 1]


def alone(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids)[None], use_cache=False, **kwargs)


def test_scores_come_back_in_order_once_each_and_equal_unpacked():
    model = tiny_model("qwen2")
    seqs = random_sequences(LENGTHS, seed=1)
    scores = warppack.evaluate_packed(model, [{"input_ids": s} for s in seqs], max_tokens=16)
    assert len(scores) == len(seqs)
    for seq, score in zip(seqs, scores):
        labels = seq.clone()
        labels[0] = -100
        (expected,) = warppack.score_sequences(alone(model, seq).logits, labels, torch.tensor([0, len(seq)]))
        assert score.num_tokens == len(seq) - 1 and score.is_greedy == expected.is_greedy
        assert score.logprob == pytest.approx(expected.logprob, rel=1e-5, abs=1e-5)


def test_loglikelihood_scores_only_the_continuation():
    model = tiny_model("gemma2")
    contexts = random_sequences([4, 1, 9, 6], seed=2)
    continuations = random_sequences([1, 3, 2, 5], seed=3)
    requests = [(c.tolist(), x.tolist()) for c, x in zip(contexts, continuations)]
    got = warppack.loglikelihood(model, requests, max_tokens=12)
    for (context, continuation), (logprob, is_greedy) in zip(requests, got):
        logits = alone(model, context + continuation).logits[0].double()
        logp = logits.log_softmax(-1)[len(context) - 1 : -1]
        target = torch.tensor(continuation)
        assert logprob == pytest.approx(logp.gather(-1, target[:, None]).sum().item(), rel=1e-5)
        assert is_greedy == bool((logp.argmax(-1) == target).all())


def test_loglikelihood_forwards_each_row_once_and_the_head_only_at_continuations():
    model = tiny_model("llama")
    context = random_sequences([7], seed=5)[0].tolist()
    requests = [(context, [choice]) for choice in (11, 12, 13)]  # multiple choice: one row, three answers
    requests += [([4, 5], [6, 7, 8]), (context, [11])]
    rows, head = [], []
    hooks = [model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["cu_seq_lens_q"].tolist()),
                                             with_kwargs=True),
             model.lm_head.register_forward_hook(lambda m, a, out: head.append(a[0].shape[1]))]
    done = []
    try:
        got = warppack.loglikelihood(model, requests, max_tokens=32, progress=done.append)
    finally:
        for hook in hooks:
            hook.remove()
    assert rows == [[0, 7, 11]] and head == [1 + 3] and sum(done) == len(requests)
    assert got[0] == got[4] and len({logprob for logprob, _ in got[:3]}) == 3
    for (context_ids, continuation), (logprob, is_greedy) in zip(requests, got):
        logits = alone(model, context_ids + continuation).logits[0]
        logp = logits.float().log_softmax(-1)[len(context_ids) - 1 : -1]
        target = torch.tensor(continuation)
        assert logprob == pytest.approx(logp.gather(-1, target[:, None]).sum().item(), abs=1e-5)
        assert is_greedy == bool((logp.argmax(-1) == target).all())


def test_loglikelihood_takes_the_log_softmax_in_fp32_unless_told():
    model = tiny_model("qwen2").to(torch.bfloat16)
    contexts = random_sequences([6, 3, 9], seed=6)
    continuations = random_sequences([2, 4, 1], seed=7)
    requests = [(c.tolist(), x.tolist()) for c, x in zip(contexts, continuations)]
    rows = [(c + x)[:-1] for c, x in requests]
    ends = [x for _, x in requests]
    fp32 = warppack.loglikelihood(model, requests, max_tokens=16)
    assert fp32 == score_continuations(model, rows, ends, max_tokens=16, softmax_dtype=torch.float32)
    own = warppack.loglikelihood(model, requests, max_tokens=16, softmax_dtype=None)
    assert own == score_continuations(model, rows, ends, max_tokens=16)
    assert own != fp32  # bf16 log-probabilities are coarser


def test_loglikelihood_refuses_requests_it_cannot_score_whole():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"request 1: a loglikelihood request needs a non-empty context and "
                                         r"continuation \(got 0 and 2 tokens\).*eot_token_id"):
        warppack.loglikelihood(model, [([3], [4]), ([], [5, 6])], max_tokens=8)
    with pytest.raises(ValueError, match=r"request 0: .*\(got 1 and 0 tokens\)"):
        warppack.loglikelihood(model, [([3], [])], max_tokens=8)
    with pytest.raises(ValueError, match=r"request 1 has 7 context and 2 continuation tokens, more than "
                                         r"max_tokens=8; .*raise max_tokens"):
        warppack.loglikelihood(model, [([3] * 7, [4]), ([3] * 7, [4, 5])], max_tokens=8)
    with pytest.raises(TypeError, match=r"request 0 is \[3, 4, 5\]; pass each request as a \(context_ids, "):
        warppack.loglikelihood(model, [[3, 4, 5]], max_tokens=8)
    with pytest.raises(TypeError, match=r"request 0: context and continuation must be sequences of token ids, "
                                        r"got 'The sky is' and ' blue'; tokenize the text first"):
        warppack.loglikelihood(model, [("The sky is", " blue")], max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens must be > 0, got 0"):
        warppack.loglikelihood(model, [([3], [4])], max_tokens=0)
    assert len(warppack.loglikelihood(model, [([3] * 7, [4])], max_tokens=8)) == 1  # exactly max_tokens: scored
    assert warppack.loglikelihood(model, [], max_tokens=8) == []


def test_embedding_pooling_through_the_same_loop():
    model = tiny_model("llama")
    seqs = random_sequences(LENGTHS, seed=4)

    def mean_embedding(outputs, batch):
        pooled = warppack.pool_sequences(outputs.hidden_states[-1], batch["cu_seq_lens_q"],
                                         num_sequences=batch.num_sequences)
        return list(pooled)

    got = warppack.evaluate_packed(model, [{"input_ids": s} for s in seqs], max_tokens=16,
                                   score_fn=mean_embedding, forward_kwargs={"output_hidden_states": True})
    for seq, embedding in zip(seqs, got):
        expected = alone(model, seq, output_hidden_states=True).hidden_states[-1][0].mean(0)
        torch.testing.assert_close(embedding, expected, rtol=1e-5, atol=1e-5)


def test_pool_modes_and_unpack_agree():
    hidden = torch.randn(1, 10, 3)
    batch = warppack.PackedCollator(12, static_shape=True)([{"input_ids": [1] * 4}, {"input_ids": [2] * 6}])
    hidden = torch.cat([hidden, torch.randn(1, 2, 3)], dim=1)  # two padding positions
    parts = warppack.unpack(hidden, batch)
    for mode, pick in (("mean", lambda p: p.mean(0)), ("first", lambda p: p[0]), ("last", lambda p: p[-1])):
        pooled = warppack.pool_sequences(hidden, batch["cu_seq_lens_q"], mode=mode, num_sequences=batch.num_sequences)
        torch.testing.assert_close(pooled, torch.stack([pick(p) for p in parts]))
    with pytest.raises(ValueError, match="mode='max'"):
        warppack.pool_sequences(hidden, batch["cu_seq_lens_q"], mode="max")


def test_examples_are_never_dropped_or_truncated():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"example 1 has 20 tokens.*raise max_tokens"):
        warppack.evaluate_packed(model, [{"input_ids": [3] * 4}, {"input_ids": [3] * 20}], max_tokens=16)
    with pytest.raises(ValueError, match="example 0 has 0 tokens"):
        warppack.evaluate_packed(model, [{"input_ids": []}], max_tokens=16)
    with pytest.raises(ValueError, match="eot_token_id"):
        warppack.loglikelihood_example([], [5])
