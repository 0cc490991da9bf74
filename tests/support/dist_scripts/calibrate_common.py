"""What the multi-rank calibration scripts share: ranks with different simulated memory, and the
budget a rank finds alone (an unwrapped twin of the model, before any process group)."""

import torch

import warppack
from ddp_common import make_model
from simulated_device import SimulatedDevice


def device_of(model, rank: int) -> SimulatedDevice:
    """Rank ``r`` has 250 kB less memory than rank ``r - 1``, so their budgets differ."""
    return SimulatedDevice(total_bytes=1_000_000 - 250_000 * rank, static_bytes=100_000, per_token=100,
                           per_square=0.5).attach(model)


def budget_alone(rank: int, max_seq_len: int = 64) -> int:
    twin = make_model()
    return warppack.calibrate_token_budget(twin, optimizer=torch.optim.AdamW(twin.parameters()),
                                           max_seq_len=max_seq_len, memory=device_of(twin, rank), cache=False)
