"""One packed batch: its buffer layout, the pinned buffer pool, the collator that fills it, and unpacking."""
