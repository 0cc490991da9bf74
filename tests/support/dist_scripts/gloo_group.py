"""The gloo process group every torchrun script of the test suite joins, with a stall report.

A rank that stops taking part in collectives leaves the others waiting until the group's timeout.
CI machines are small and shared, so the timeout is generous (a healthy script takes seconds); and
should a rank still stall, each rank prints where every one of its threads stands shortly before the
timeout, so the failure names the line that hung rather than only the collective that gave up.
"""

import faulthandler
import sys
from datetime import timedelta

import torch.distributed as dist

#: Seconds a collective waits for the slowest rank; the tests' subprocess limit is longer.
TIMEOUT_S = 240
#: Seconds after which every rank prints its threads' stacks (once), before the collective gives up.
REPORT_AFTER_S = TIMEOUT_S - 30


def start_group() -> None:
    """Join the gloo group of ``torchrun`` (rank and world from its environment)."""
    faulthandler.dump_traceback_later(REPORT_AFTER_S, repeat=False, file=sys.stderr)
    dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT_S))


def end_group() -> None:
    """Wait for every rank, leave the group and cancel the stall report."""
    dist.barrier()
    dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()
