"""Two gloo ranks with different (simulated) device memory must calibrate one budget.

Run by tests/memory/test_calibrate.py through ``torch.distributed.run --nproc_per_node=2``; writes
``rank{r}.json`` into the folder given as argv[1].
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]  # support/, tests/
import warppack  # noqa: E402
from gloo_group import end_group, start_group  # noqa: E402
from calibrate_common import device_of  # noqa: E402
from simulated_device import ToyLM  # noqa: E402

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
torch.manual_seed(0)
model = ToyLM()
opt = torch.optim.AdamW(model.parameters())
device = device_of(model, rank)
kwargs = dict(optimizer=opt, max_seq_len=128, memory=device)

alone = warppack.calibrate_token_budget(model, cache=False, **kwargs)  # before any process group

start_group()
cache = out / f"cache{rank}"
budget = warppack.calibrate_token_budget(model, cache_dir=cache, **kwargs)
dist.barrier()
(entry,) = cache.glob("*.json")
if rank == 0:  # a stale entry on one node only: must not be trusted by half of the ranks
    data = json.loads(entry.read_text())
    data["max_tokens"] = 12345
    entry.write_text(json.dumps(data))
else:
    entry.unlink()
dist.barrier()
with_cache = warppack.calibrate_token_budget(model, cache_dir=cache, **kwargs)
(out / f"rank{rank}.json").write_text(json.dumps({"alone": alone, "budget": budget, "with_cache": with_cache}))
end_group()
