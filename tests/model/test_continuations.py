"""``score_continuations``: the packed scorer behind ``warppack.loglikelihood`` and ``--model warppack``.

Against each request scored alone, on real transformers models; and, as a property over random
request sets, against a pure-Python reference on a model without attention (whose logits depend
only on the current token): every request answered once and in order, every distinct input row
forwarded exactly once, no batch over budget, the LM head run only where a continuation is read.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import warppack
from warppack.model import continuations as scorer
from warppack.model.continuations import score_continuations

transformers = pytest.importorskip("transformers")
from support.models import tiny_model  # noqa: E402


def alone(model, row, continuation):
    """(logprob, is_greedy) of one request from its own unpacked forward, fp32 log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row]), use_cache=False).logits[0]
    logp = logits.float().log_softmax(-1)[len(row) - len(continuation):]
    target = torch.tensor(continuation)
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def requests_for(model, count, *, seed=0, longest=40):
    """Random requests sharing some input rows; every third continuation is the model's own greedy one."""
    rng = random.Random(seed)
    rows, continuations = [], []
    for i in range(count):
        row = rows[-1] if i % 4 == 1 else [rng.randrange(3, 96) for _ in range(rng.randint(1, longest))]
        size = rng.randint(1, len(row))
        if i % 3 == 0:
            with torch.no_grad():
                greedy = model(input_ids=torch.tensor([row]), use_cache=False).logits[0].argmax(-1).tolist()
            continuation = greedy[len(row) - size:]
        else:
            continuation = [rng.randrange(3, 96) for _ in range(size)]
        rows.append(row)
        continuations.append(continuation)
    return rows, continuations


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_packed_scores_equal_each_request_alone(family):
    # gemma2: final logit softcapping after the LM head; qwen2: sliding windows shorter than the rows.
    model = tiny_model(family)
    rows, continuations = requests_for(model, 24)
    got = score_continuations(model, rows, continuations, max_tokens=48)  # some rows are longer: alone
    assert warppack.attention_backend() == "exact_segments"
    for row, continuation, (logprob, greedy) in zip(rows, continuations, got):
        want_logprob, want_greedy = alone(model, row, continuation)
        assert logprob == pytest.approx(want_logprob, abs=1e-4)
        assert greedy == want_greedy
    assert any(greedy for _, greedy in got) and not all(greedy for _, greedy in got)


def test_chunked_log_softmax_gives_the_same_scores(monkeypatch):
    model = tiny_model("llama")
    rows, continuations = requests_for(model, 12, seed=1)
    whole = score_continuations(model, rows, continuations, max_tokens=64)
    monkeypatch.setattr(scorer, "_CHUNK_ELEMENTS", 3 * 96)  # three logits rows per log-softmax
    assert score_continuations(model, rows, continuations, max_tokens=64) == whole


class PerToken(torch.nn.Module):
    """Logits that depend only on the current token (no attention), and a record of every forward."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab) * 3)
        self.forwards: list = []

    def forward(self, input_ids, position_ids, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k,
                use_cache=False, logits_to_keep=None):
        cu = cu_seq_lens_q.tolist()
        tokens = input_ids[0].tolist()
        logits = self.table[input_ids]
        if logits_to_keep is not None:
            logits = logits[:, logits_to_keep]
        self.forwards.append(([tuple(tokens[a:b]) for a, b in zip(cu, cu[1:])], logits.shape[1]))
        return transformers.modeling_outputs.CausalLMOutput(logits=logits)


def reference(table: torch.Tensor, row, continuation):
    logp = table.detach().double().log_softmax(-1).tolist()
    steps = list(zip(row[len(row) - len(continuation):], continuation))
    return math.fsum(logp[a][b] for a, b in steps), all(max(range(len(logp[a])), key=logp[a].__getitem__) == b
                                                       for a, b in steps)


@st.composite
def request_sets(draw):
    pool = draw(st.lists(st.lists(st.integers(0, 10), min_size=1, max_size=12), min_size=1, max_size=6))
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=0, max_size=14))
    rows = [pool[i] for i in picks]
    continuations = [draw(st.lists(st.integers(0, 10), min_size=1, max_size=len(row))) for row in rows]
    return rows, continuations, draw(st.integers(1, 20))


@settings(max_examples=120, deadline=None)
@given(request_sets())
def test_every_request_once_in_order_every_row_forwarded_once(case):
    rows, continuations, max_tokens = case
    model = PerToken()
    got = score_continuations(model, rows, continuations, max_tokens=max_tokens)
    assert len(got) == len(rows)
    for row, continuation, (logprob, greedy) in zip(rows, continuations, got):
        want_logprob, want_greedy = reference(model.table, row, continuation)
        assert logprob == pytest.approx(want_logprob, abs=1e-4)
        assert greedy == want_greedy
    forwarded = [segment for segments, _ in model.forwards for segment in segments]
    assert sorted(forwarded) == sorted({tuple(row) for row in rows})  # each distinct row exactly once
    for segments, _ in model.forwards:
        assert sum(map(len, segments)) <= max_tokens or len(segments) == 1
    longest = {}
    for row, continuation in zip(rows, continuations):
        longest[tuple(row)] = max(longest.get(tuple(row), 0), len(continuation))
    assert sum(kept for _, kept in model.forwards) == sum(longest.values())  # LM head only where read


def test_bad_requests_are_named():
    model = PerToken()
    with pytest.raises(ValueError, match=r"request 1: a continuation of 3 tokens cannot be predicted by an input "
                                         r"row of 2"):
        score_continuations(model, [[1, 2], [1, 2]], [[3], [4, 5, 6]], max_tokens=8)
    with pytest.raises(ValueError, match="request 0: a continuation of 0 tokens"):
        score_continuations(model, [[1, 2]], [[]], max_tokens=8)
    with pytest.raises(ValueError, match="got 2 inputs but 1 continuations"):
        score_continuations(model, [[1], [2]], [[3]], max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens must be > 0, got 0"):
        score_continuations(model, [[1]], [[2]], max_tokens=0)
    assert score_continuations(model, [], [], max_tokens=8) == [] and model.forwards == []


def test_model_that_ignores_logits_to_keep():
    # A forward that swallows unknown keyword arguments returns every position's logits.
    class Swallows(PerToken):
        def forward(self, input_ids, **kwargs):
            return transformers.modeling_outputs.CausalLMOutput(logits=self.table[input_ids])

    model = Swallows()
    rows, continuations = [[1, 2, 3], [4, 5]], [[2, 9], [7]]
    got = score_continuations(model, rows, continuations, max_tokens=8)
    want = [reference(model.table, r, c) for r, c in zip(rows, continuations)]
    assert np.allclose([g[0] for g in got], [w[0] for w in want], atol=1e-5)
