"""GPU memory: the device's numbers, the token-budget calibrator, its cache and the OOM guard."""
