"""Two gloo ranks under ``accelerate`` (MULTI_CPU: the prepared model is DDP-wrapped) with different
simulated memory: the optimizer comes from the accelerator, and both ranks must return one budget.

Run by tests/memory/test_calibrate.py through ``torch.distributed.run --nproc_per_node=2``; writes
``rank{r}.json`` into the folder given as argv[1].
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]  # support/, tests/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import warppack  # noqa: E402
from calibrate_common import budget_alone, device_of  # noqa: E402
from ddp_common import make_model  # noqa: E402

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
alone = budget_alone(rank)

from accelerate import Accelerator  # noqa: E402

accelerator = Accelerator(cpu=True)
model = make_model()
model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
# the probes run the module inside DDP (no collective inside a probe): the memory model hooks it there
budget = warppack.calibrate_token_budget(model, accelerator=accelerator, max_seq_len=64,
                                        memory=device_of(model.module, rank), cache=False)
(out / f"rank{rank}.json").write_text(json.dumps({"alone": alone, "budget": budget, "wrapped": type(model).__name__,
                                                  "distributed_type": str(accelerator.distributed_type)}))
accelerator.end_training()
