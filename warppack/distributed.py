"""Distributed helpers: who am I, equal step counts for streams, and the global label-token count.

Everything here rides on ``torch.distributed`` collectives (DDP/FSDP under torchrun or Accelerate);
warppack never opens a transport of its own.

Loss normalisation across ranks: DDP *averages* gradients over ranks, so for the mean loss (and its
gradients) to equal a single-process run over the same examples, every rank divides its summed token
loss by the label tokens of the whole step on all ranks, and multiplies by the world size::

    n = warppack.global_num_label_tokens(batch["labels"])   # same value on every rank
    loss = warppack.causal_lm_loss(logits, batch["labels"], num_items_in_batch=n) * world_size
    loss.backward()                                          # DDP's mean of the ranks = Σ token losses / n

>>> import torch, warppack
>>> warppack.global_num_label_tokens(torch.tensor([[-100, 5, 6, -100, 7]]))  # no process group: local
tensor(3)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from warppack.batch.collator import PackedCollator, empty_step
from warppack.engine.options import check_int

__all__ = ["MAX_REPLICAS", "equal_steps", "global_num_label_tokens", "is_distributed", "resolve_replicas"]

#: More ranks than any job runs; a larger count is a mistake (a loader's grid has a slot per rank).
MAX_REPLICAS = 1 << 20


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def resolve_replicas(num_replicas: Optional[int], rank: Optional[int], *, owner: str) -> Tuple[int, int]:
    """``(num_replicas, rank)``, each defaulting to the initialised process group (else 1 and 0).

    ``owner`` names the class in error messages.
    """
    grouped = is_distributed()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if grouped else 1
    num_replicas = check_int(num_replicas, name="num_replicas", minimum=1, maximum=MAX_REPLICAS)
    if rank is None:
        if grouped:
            rank = dist.get_rank()
        elif num_replicas == 1:
            rank = 0
        else:
            raise ValueError(
                f"{owner}(num_replicas={num_replicas}) needs rank= too: no torch.distributed process group "
                f"is initialised to read it from (call torch.distributed.init_process_group first, or pass "
                f"rank=...)"
            )
    rank = check_int(rank, name="rank", minimum=0)
    if rank >= num_replicas:
        raise ValueError(
            f"{owner}: rank={rank} is out of range for num_replicas={num_replicas}; ranks are 0..{num_replicas - 1}"
        )
    return num_replicas, rank


# -- equal steps for streams ---------------------------------------------------------------------
_GLOO_GROUPS: Dict[int, Any] = {}  # id(group) -> its gloo twin


def _flag_group(group: Any) -> Any:
    """A gloo group for one-int flags: CPU tensors, so no device sync in the training loop."""
    if dist.get_backend(group) == "gloo":
        return group
    key = id(group)
    if key not in _GLOO_GROUPS:
        if group is not None and group is not dist.group.WORLD:
            raise ValueError(
                f"equal_steps(group=...) flags travel over gloo; the group given uses backend "
                f"{dist.get_backend(group)!r}. Pass a gloo group (torch.distributed.new_group(ranks, "
                f"backend='gloo')) or leave group=None"
            )
        # new_group is itself a collective: every rank reaches this line at the same call of equal_steps.
        _GLOO_GROUPS[key] = dist.new_group(backend="gloo")
    return _GLOO_GROUPS[key]


def _empty_batch_factory(batches: Any) -> Callable[[], Any]:
    dataset = getattr(batches, "dataset", None)
    collate = getattr(dataset, "collator", None)
    if collate is None:
        collate_fn = getattr(batches, "collate_fn", None)
        # Another collate_fn (the DataLoader's default, a wrapper) is not known to make a step of nothing.
        collate = collate_fn if isinstance(collate_fn, PackedCollator) else PackedCollator()
    return lambda: empty_step(collate)


def equal_steps(
    batches: Iterable[Any],
    *,
    empty_batch: Optional[Callable[[], Any]] = None,
    group: Any = None,
) -> Iterator[Any]:
    """Yield ``batches``, then empty batches until every rank's stream has ended: equal step counts.

    For streams whose length nobody knows in advance (a :class:`~warppack.PackedIterableDataset`
    without ``lengths=``), ranks run out at different steps and the first collective after that would
    wait forever. Each step this all-reduces one int ("I still have a batch") over a gloo group (CPU,
    no device sync; created once when the default backend is NCCL, so every rank must call
    ``equal_steps`` at the same point). A rank that ran out gets ``empty_batch()`` — by default the
    loader's ``PackedCollator.empty_batch()`` (its dataset's collator, else its ``collate_fn``, else a
    default ``PackedCollator``): one padding token whose labels are all ignored, a zero-loss step that
    still runs forward, backward and every collective. A dataset's collator that is not a
    ``PackedCollator`` is called with ``[]`` and must return such a step itself. Without a process
    group it is a no-op.

    The state of the underlying loader stays exact: it is never read ahead.

    >>> list(equal_steps([1, 2, 3]))   # one process: unchanged
    [1, 2, 3]
    """
    dataset = getattr(batches, "dataset", None)
    if dataset is not None and hasattr(dataset, "_steps_equalized"):
        dataset._steps_equalized = True  # pickled to workers with the dataset: silences the warning
    return _equal_steps(batches, empty_batch, group)


def _equal_steps(batches: Iterable[Any], empty_batch: Optional[Callable[[], Any]], group: Any) -> Iterator[Any]:
    if not is_distributed() or dist.get_world_size(group) == 1:
        yield from batches
        return
    flags = _flag_group(group)
    make_empty = empty_batch or _empty_batch_factory(batches)
    iterator = iter(batches)
    mine = True
    while True:
        batch = None
        if mine:
            try:
                batch = next(iterator)
            except StopIteration:
                mine = False
        flag = torch.tensor([1 if mine else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=flags)
        if int(flag.item()) == 0:
            return
        yield batch if mine else make_empty()


# -- loss normalisation --------------------------------------------------------------------------
def _collective_device(group: Any, fallback: torch.device) -> torch.device:
    if dist.get_backend(group) == "nccl" and fallback.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


def global_num_label_tokens(labels: Any, *, group: Any = None, ignore_index: int = -100) -> torch.Tensor:
    """Label tokens (``labels != ignore_index``) of this step summed over all ranks of ``group``.

    ``labels`` is a labels tensor, a batch mapping with a ``"labels"`` key, or a list of either (the
    micro-batches of one gradient-accumulation step). Returns an int64 0-d tensor, identical on every
    rank, on the labels' device (no host sync). Pass it as ``num_items_in_batch`` and multiply the
    loss by the world size (see the module docstring): the update then equals a single-process run.
    Counting with or without the causal shift gives the same number for packed rows, whose first
    label is always ignored. Empty batches count 0, so their step adds nothing.
    """
    parts = labels if isinstance(labels, (list, tuple)) else [labels]
    if not parts:
        raise ValueError("global_num_label_tokens got an empty list; pass the labels of this step")
    count: Optional[torch.Tensor] = None
    for part in parts:
        if isinstance(part, Mapping):
            part = part["labels"]
        if not torch.is_tensor(part):
            part = torch.as_tensor(part)
        local = (part != ignore_index).sum().to(torch.int64)
        count = local if count is None else count + local.to(count.device)
    assert count is not None, "parts is not empty (checked above)"
    if is_distributed() and dist.get_world_size(group) > 1:
        device = count.device
        count = count.to(_collective_device(group, device))
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
        count = count.to(device)
    return count
