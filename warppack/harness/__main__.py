"""``python -m warppack.harness``: lm-eval's own command line, with ``--model warppack`` registered.

Every argument is lm-eval's (``run``, ``ls``, ``validate`` and the legacy form without a command):

    python -m warppack.harness run --model warppack --model_args pretrained=HuggingFaceTB/SmolLM2-135M \
        --tasks hellaswag
"""

from lm_eval.__main__ import cli_evaluate

import warppack.harness  # noqa: F401  (registers --model warppack before lm-eval resolves the name)

__all__ = ["main"]


def main() -> None:
    """Run lm-eval's command line (``sys.argv``) with the warppack backend available."""
    cli_evaluate()


if __name__ == "__main__":
    main()
