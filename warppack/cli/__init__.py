"""The ``warppack`` console script: its commands, error type and exit codes."""
