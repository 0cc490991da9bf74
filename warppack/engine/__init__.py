"""The packing engine's Python side: lengths in, validated options, plans out (calls the native core)."""
