"""PackedBatchSampler: plans an epoch, deals its bins to ranks, saves and restores its position."""
