"""Distributed helpers, and real multi-process runs with torchrun + gloo (2, 3 and 4 ranks)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import warppack
from warppack.distributed import resolve_replicas

from support.paths import DIST_SCRIPTS
from support.torchrun import torchrun


# -- helpers, one process ----------------------------------------------------------------------
def test_resolve_replicas_without_a_process_group():
    assert resolve_replicas(None, None, owner="X") == (1, 0)
    assert resolve_replicas(4, 3, owner="X") == (4, 3)
    with pytest.raises(ValueError, match=r"X\(num_replicas=4\) needs rank= too"):
        resolve_replicas(4, None, owner="X")
    with pytest.raises(ValueError, match="rank=2 is out of range for num_replicas=2"):
        resolve_replicas(2, 2, owner="X")
    with pytest.raises(ValueError, match="num_replicas must be an int >= 1"):
        resolve_replicas(0, 0, owner="X")


def test_global_num_label_tokens_local_forms():
    labels = torch.tensor([[-100, 5, 6, -100, 7]])
    assert int(warppack.global_num_label_tokens(labels)) == 3
    assert int(warppack.global_num_label_tokens([labels, {"labels": labels}])) == 6
    empty = warppack.PackedCollator().empty_batch()
    assert int(warppack.global_num_label_tokens(empty)) == 0
    with pytest.raises(ValueError, match="empty list"):
        warppack.global_num_label_tokens([])


def test_equal_steps_is_a_no_op_in_one_process():
    assert list(warppack.equal_steps(iter([1, 2]))) == [1, 2]


# -- real processes ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3, 4])
def test_torchrun_gloo_exactly_once_and_equal_steps(world, tmp_path):
    torchrun("exactly_once.py", world, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world"] == world
    for loader in ("sampler", "sampler_fewer_than_ranks", "iterable_lengths", "iterable_equal_steps", "accelerate"):
        for epoch, result in ((k, v) for k, v in summary[loader].items() if k.startswith("epoch")):
            where = f"{loader} {epoch} on {world} ranks"
            assert len(set(result["steps"])) == 1, f"{where}: unequal steps {result['steps']}"
            assert result["exactly_once"], f"{where}: {result['duplicates']} duplicated, {result['missing']} missing"
            assert result["as_expected"], f"{where}: a rank read another sequence than its own sampler's"
    few = summary["sampler_fewer_than_ranks"]["epoch0"]
    assert few["steps"] == [1] * world and sum(few["empty_batches"]) == 1, "one rank gets an explicit empty batch"
    # len() (taken after the last epoch) is that epoch's exact step count
    assert summary["sampler"]["len"] == summary["sampler"]["epoch1"]["steps"][0]
    assert summary["iterable_lengths"]["len"] == summary["iterable_lengths"]["epoch1"]["steps"][0]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_training_matches_a_single_process_run(world, tmp_path):
    sys.path.insert(0, str(DIST_SCRIPTS))  # the scripts import their shared module by its bare name
    from ddp_common import MODEL_KEYS, make_data, make_model

    torchrun("ddp_train.py", world, tmp_path)
    saved = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert saved["world"] == world and len(saved["steps"]) >= 4
    examples, _ = make_data()
    model = make_model()
    model.load_state_dict(saved["initial"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    collator = warppack.PackedCollator()
    seen = []
    for step, record in enumerate(saved["steps"]):
        step_examples = [examples[i] for indices in record["indices"] for i in indices]
        seen += [e["idx"] for e in step_examples]
        batch = collator(step_examples)  # all ranks' sequences in one row: the single-process step
        logits = model(**{k: batch[k] for k in MODEL_KEYS}).logits
        loss = warppack.causal_lm_loss(logits, batch["labels"])
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert loss.item() == pytest.approx(record["loss"], rel=1e-5), f"step {step}: loss"
        assert torch.allclose(grads, record["grads"], rtol=1e-4, atol=1e-6), (
            f"step {step}: max gradient difference {(grads - record['grads']).abs().max():.3g}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    assert sorted(seen) == sorted(list(range(len(examples))) * 2), "two epochs, every example once each"
