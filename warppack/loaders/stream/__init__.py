"""PackedIterableDataset: reads a stream, packs it online per (rank, worker) shard, resumes exactly."""
