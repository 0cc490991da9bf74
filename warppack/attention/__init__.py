"""Variable-length attention over packed rows and its registration as ``attn_implementation="warppack"``."""
