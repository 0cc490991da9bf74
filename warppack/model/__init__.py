"""What runs a model on packed batches: the contamination check, token-weighted losses, packed scoring."""
