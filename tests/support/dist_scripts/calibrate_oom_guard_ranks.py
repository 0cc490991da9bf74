"""Two gloo ranks, DDP, OOMGuard: only rank 1 runs out of memory; both must decide alike.

Run by tests/memory/test_oom_guard.py through ``torch.distributed.run --nproc_per_node=2``; writes
``rank{r}.json`` into the folder given as argv[1]: budgets after each step, OOM count, the largest
difference between the guarded DDP gradients and the average of both ranks' full-batch gradients
computed without DDP, and the parameters after the optimizer steps.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]  # support/, tests/
import warppack  # noqa: E402
from gloo_group import end_group, start_group  # noqa: E402
from simulated_device import SimulatedDevice, ToyLM  # noqa: E402

out = Path(sys.argv[1])
start_group()
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
module = ToyLM().double()
reference = ToyLM().double()
SimulatedDevice(total_bytes=1000 if rank == 0 else 30).attach(module)
model = torch.nn.parallel.DistributedDataParallel(module)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
collate = warppack.PackedCollator()
guard = warppack.OOMGuard(model, collator=collate)


def batch(step, r):
    gen = torch.Generator().manual_seed(100 * step + r)
    lengths = torch.randint(3, 15, (6,), generator=gen).tolist()
    return collate([{"input_ids": torch.randint(3, 64, (n,), generator=gen)} for n in lengths])


budgets, grad_error = [], 0.0
for step in range(3):
    guard(batch(step, rank))
    budgets.append(guard.max_tokens)
    # reference: both ranks' full batches through a plain copy, gradients averaged
    reference.load_state_dict(module.state_dict())
    reference.zero_grad()
    for r in range(world):
        (reference(**batch(step, r))["loss"] / world).backward()
    for p, q in zip(module.parameters(), reference.parameters()):
        grad_error = max(grad_error, (p.grad - q.grad).abs().max().item())
    optimizer.step()
    optimizer.zero_grad()

params = [round(p.sum().item(), 12) for p in module.parameters()]
(out / f"rank{rank}.json").write_text(json.dumps({"budgets": budgets, "ooms": guard.ooms, "steps": step + 1,
                                                   "grad_error": grad_error, "params": params}))
end_group()
