"""``python -m warppack.harness``: lm-eval's own command line, with ``--model warppack`` registered.

Every argument is lm-eval's (``run``, ``ls``, ``validate`` and the legacy form without a command):

    python -m warppack.harness run --model warppack --model_args pretrained=HuggingFaceTB/SmolLM2-135M \
        --tasks hellaswag
"""

from lm_eval.__main__ import cli_evaluate

from warppack.harness.registration import register

__all__ = ["main"]


def main() -> None:
    """Run lm-eval's command line (``sys.argv``) with the warppack backend available."""
    register()  # before lm-eval resolves the name
    cli_evaluate()


if __name__ == "__main__":
    main()
