"""Every rank of a gloo group iterates warppack loaders with 2 DataLoader workers; rank 0 checks them.

Run by tests/test_distributed.py through ``torch.distributed.run --standalone --nproc_per_node=N``;
writes ``summary.json`` into the folder given as argv[1] (rank 0). Each step all-reduces the batch's
token count (a stand-in for DDP's gradient all-reduce); a rank with fewer steps would leave the
others blocked until the group's timeout (``gloo_group``). ``all_gather_object`` of the example ids
read by each rank proves exactly-once.
"""

import functools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]  # support/, tests/
import warppack  # noqa: E402
from gloo_group import end_group, start_group  # noqa: E402
from resume_harness import ListDataset, example_ids, make_examples  # noqa: E402

WORKERS = 2
# Workers start from a fork server, not by forking the rank: a rank runs gloo's threads, and a child
# forked from a multithreaded CPython process can hang in the interpreter's after-fork cleanup before
# any code of its own runs.
CONTEXT = "forkserver"


def loader_of(dataset, **kwargs):
    """A DataLoader with ``WORKERS`` workers started from the fork server."""
    return DataLoader(dataset, num_workers=WORKERS, multiprocessing_context=CONTEXT, **kwargs)


def run(name, loader, *, total, epochs=2, set_epoch, wrap=lambda x: x, expect=None):
    """Steps, all-reduces and exactly-once of ``total`` examples over ``epochs`` epochs of one loader on every rank.

    ``expect(epoch)``, when given, is the id sequence this rank must read (checked on every rank).
    """
    out = {}
    for epoch in range(epochs):
        set_epoch(epoch)
        ids, steps, tokens, empties = [], 0, 0, 0
        for batch in wrap(loader):
            t = torch.tensor([batch.num_tokens], dtype=torch.int64)
            dist.all_reduce(t)  # every step: a rank that stopped early would hang the others
            ids += example_ids(batch)
            steps += 1
            tokens += int(t)
            empties += batch.num_sequences == 0
        gathered = [None] * dist.get_world_size()
        as_expected = expect is None or ids == expect(epoch)
        dist.all_gather_object(gathered, {"ids": ids, "steps": steps, "tokens": tokens, "expected": as_expected,
                                          "empties": empties})
        if dist.get_rank() == 0:
            all_ids = sorted(i for g in gathered for i in g["ids"])
            out[f"epoch{epoch}"] = {
                "steps": [g["steps"] for g in gathered],
                "exactly_once": all_ids == list(range(total)),
                "duplicates": len(all_ids) - len(set(all_ids)),
                "missing": total - len(set(all_ids)),
                "as_expected": all(g["expected"] for g in gathered),
                "empty_batches": [g["empties"] for g in gathered],
            }
    return out


def main():
    start_group()
    world = dist.get_world_size()
    n = 203
    examples, lengths = make_examples(n, seed=11, long_every=41, long_len=700)
    summary = {"world": world}

    # Map-style: the sampler reads rank/world from the process group.
    sampler = warppack.PackedBatchSampler(lengths, 512, seed=5, overlong="truncate")
    loader = loader_of(ListDataset(examples), batch_sampler=sampler,
                       collate_fn=warppack.PackedCollator(512, overlong="truncate"))
    summary["sampler"] = run("sampler", loader, total=n, set_epoch=sampler.set_epoch)
    summary["sampler"]["len"] = len(loader)

    # Fewer examples than ranks: explicit empty batches keep the steps equal.
    few = warppack.PackedBatchSampler(lengths[: world - 1], 512, seed=5, overlong="truncate")
    few_loader = loader_of(ListDataset(examples[: world - 1]), batch_sampler=few,
                           collate_fn=warppack.PackedCollator(512, overlong="truncate", allow_empty=True))
    summary["sampler_fewer_than_ranks"] = run("few", few_loader, total=world - 1, set_epoch=few.set_epoch, epochs=1)

    # Streams with lengths=: equal steps without communication.
    stream = warppack.PackedIterableDataset(examples, 512, buffer_size=16, overlong="split", lengths=lengths,
                                            num_workers=WORKERS, shuffle=True, seed=2)
    summary["iterable_lengths"] = run("iterable", loader_of(stream, batch_size=None), total=n,
                                      set_epoch=stream.set_epoch)
    summary["iterable_lengths"]["len"] = len(stream)

    # Streams without lengths: equal_steps pads the ranks that run out first.
    plain = warppack.PackedIterableDataset(functools.partial(iter, examples), 512, buffer_size=16, overlong="split")
    summary["iterable_equal_steps"] = run("equal_steps", loader_of(plain, batch_size=None), total=n,
                                          set_epoch=plain.set_epoch, wrap=warppack.equal_steps)

    # Accelerate deals an interleaved sampler's batches to the ranks itself.
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    glob = warppack.PackedBatchSampler(lengths, 512, seed=5, overlong="truncate", interleaved=True)
    prepared = accelerator.prepare(loader_of(ListDataset(examples), batch_sampler=glob,
                                             collate_fn=warppack.PackedCollator(512, overlong="truncate")))

    def direct(epoch):
        """What this rank's own PackedBatchSampler reads in ``epoch``: accelerate must deal exactly that."""
        own = warppack.PackedBatchSampler(lengths, 512, seed=5, overlong="truncate")
        own.set_epoch(epoch)
        return [i for batch in own for i in batch]

    summary["accelerate"] = run("accelerate", prepared, total=n, set_epoch=prepared.set_epoch, expect=direct)

    if dist.get_rank() == 0:
        Path(sys.argv[1], "summary.json").write_text(json.dumps(summary, indent=1))
    end_group()


if __name__ == "__main__":  # the fork server's workers import this file as __mp_main__
    main()
