"""The Hugging Face Trainer integration: WarpPackCallback and pack_trainer."""
