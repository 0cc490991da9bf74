"""Two gloo ranks calibrating an FSDP2-sharded (``fully_shard``) Llama with different simulated memory.

Run by tests/memory/test_calibrate.py through ``torch.distributed.run --nproc_per_node=2``; writes
``rank{r}.json`` into the folder given as argv[1]: the budget each rank measures alone (an unsharded
twin, before any process group), the sharded budget, and whether the local shards, gradients and
optimizer state came back exactly, and the refusal of ``enforce_headroom=True``. The simulated
memory of each rank keeps every failed probe a measured overshoot, never an out-of-memory error: one
rank's OOM mid-forward would leave the other in FSDP's all-gather (docs/calibration.md).
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]  # support/, tests/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import warppack  # noqa: E402
from gloo_group import end_group, start_group  # noqa: E402
from calibrate_common import budget_alone, device_of  # noqa: E402
from ddp_common import make_model  # noqa: E402

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
alone = budget_alone(rank)

start_group()
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

model = make_model()
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
# one real step first, so there are gradients and optimizer state to restore
batch = warppack.PackedCollator()([{"input_ids": list(range(3, 20))}, {"input_ids": list(range(5, 12))}])
loss = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"]).loss
loss.backward()
opt.step()
shards = [p.to_local().clone() for p in model.parameters()]
grads = [p.grad.to_local().clone() for p in model.parameters()]
state = [{k: v.to_local().clone() if hasattr(v, "to_local") else v.clone() for k, v in s.items()}
         for s in opt.state.values()]
budget = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=64, memory=device_of(model, rank),
                                        cache=False)
restored = (all(torch.equal(a, p.to_local()) for a, p in zip(shards, model.parameters()))
            and all(torch.equal(g, p.grad.to_local()) for g, p in zip(grads, model.parameters()))
            and all(all(torch.equal(s[k], v.to_local() if hasattr(v, "to_local") else v) for k, v in now.items())
                    for s, now in zip(state, opt.state.values())))
try:  # every failed probe under the cap is an OOM, which a sharded forward cannot survive on one rank
    warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=64, memory=device_of(model, rank),
                                    cache=False, enforce_headroom=True)
    refused = ""
except ValueError as error:
    refused = str(error)
(out / f"rank{rank}.json").write_text(json.dumps({"alone": alone, "budget": budget, "restored": restored,
                                                  "sharded": type(model).__name__, "refused": refused}))
end_group()
