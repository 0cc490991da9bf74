"""A DDP training run on a tiny Llama over packed batches; rank 0 saves what a single process must match.

Run by tests/test_distributed.py through ``torch.distributed.run --standalone --nproc_per_node=N``.
Loss normalisation: every rank divides its summed token loss by the label tokens of the whole step
(``warppack.global_num_label_tokens``) and multiplies by the world size, so DDP's gradient average
equals the gradient of the token-mean loss over all ranks' examples. Rank 0 writes ``ddp.pt``: the
initial weights, and per step the example indices of every rank, the global loss and the averaged
gradients (before the SGD step).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]  # support/, tests/
import warppack  # noqa: E402
from gloo_group import end_group, start_group  # noqa: E402
from ddp_common import MODEL_KEYS, make_data, make_model  # noqa: E402

start_group()
rank, world = dist.get_rank(), dist.get_world_size()
examples, lengths = make_data()
model = make_model()
initial = {k: v.clone() for k, v in model.state_dict().items()}
ddp = DistributedDataParallel(model)
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
sampler = warppack.PackedBatchSampler(lengths, 96, seed=1)
collator = warppack.PackedCollator(96)
loader = DataLoader(examples, batch_sampler=sampler, collate_fn=lambda exs: (collator(exs), [e["idx"] for e in exs]))

steps = []
for epoch in range(2):
    sampler.set_epoch(epoch)
    for batch, indices in loader:
        n = warppack.global_num_label_tokens(batch["labels"])
        logits = ddp(**{k: batch[k] for k in MODEL_KEYS}).logits
        loss = warppack.causal_lm_loss(logits, batch["labels"], num_items_in_batch=n) * world
        loss.backward()
        reported = loss.detach() / world
        dist.all_reduce(reported)  # Σ token losses / n: the single-process token mean
        gathered = [None] * world
        dist.all_gather_object(gathered, indices)
        if rank == 0:
            grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()
            steps.append({"indices": gathered, "loss": float(reported), "grads": grads, "n": int(n)})
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

if rank == 0:
    torch.save({"world": world, "initial": initial, "steps": steps}, Path(sys.argv[1]) / "ddp.pt")
end_group()
