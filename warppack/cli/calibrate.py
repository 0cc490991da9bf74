"""``warppack calibrate MODEL_DIR``: measure the largest token budget that trains on this GPU.

Loads the causal LM saved in MODEL_DIR (a transformers folder with config.json, or a folder with
one .gguf file) with ``attn_implementation="warppack"``, builds the optimizer you will train with,
and runs ``warppack.calibrate_token_budget``: real forward + backward + optimizer steps on
pessimistic packed batches, a binary search, then headroom. Prints the budget to pass as
``max_tokens``. Needs a CUDA device: the answer is a property of the GPU that will train.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any, Dict, Optional

from warppack.cli.errors import (
    EXIT_BAD_PATH,
    EXIT_MISSING_DEPENDENCY,
    EXIT_NO_DEVICE,
    EXIT_USAGE,
    CliError,
)
from warppack.cli.options import check_count, check_fraction

__all__ = ["add_arguments", "run"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder of a transformers causal LM (config.json) or one .gguf")
    parser.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        metavar="N",
        help="longest sequence you will train on (default: the model's max_position_embeddings)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="dtype the weights are loaded in (default auto)")
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="train under accelerate's mixed precision (default no)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="enable gradient checkpointing")
    parser.add_argument(
        "--optimizer", choices=("adamw", "sgd"), default="adamw", help="optimizer whose state is measured (default adamw)"
    )
    parser.add_argument("--headroom", type=float, default=None, help="fraction of device memory left free (calibrator default)")
    parser.add_argument(
        "--pad-to-multiple-of", type=int, default=None, metavar="M", help="round the budget down to a multiple of M"
    )
    parser.add_argument(
        "--static-shape", action="store_true",
        help="measure for PackedCollator(static_shape=True): every batch padded to the budget (a larger budget fits)"
    )
    parser.add_argument(
        "--max-sequences", type=int, default=None, metavar="M", help="with --static-shape: the collator's max_sequences"
    )
    parser.add_argument("--no-cache", action="store_true", help="measure again even if a cached result exists")
    parser.add_argument("--cache-dir", default=None, metavar="PATH", help="where results are cached (calibrator default)")
    parser.add_argument("--gguf-file", default=None, help="the .gguf file in MODEL_DIR (default: the only one)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _model_source(model_dir: str, gguf_file: Optional[str]) -> Dict[str, Any]:
    path = Path(model_dir).expanduser()
    if not path.exists():
        raise CliError(f"no such folder: {model_dir}", EXIT_BAD_PATH)
    if not path.is_dir():
        raise CliError(f"{model_dir} is not a folder; pass the folder the model was saved to", EXIT_BAD_PATH)
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise CliError(f"no {gguf_file} in {model_dir}", EXIT_BAD_PATH)
        return {"gguf_file": gguf_file}
    if (path / "config.json").is_file():
        return {}
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return {"gguf_file": ggufs[0]}
    if ggufs:
        raise CliError(f"{model_dir} holds several .gguf files {ggufs}; choose one with --gguf-file", EXIT_USAGE)
    raise CliError(
        f"{model_dir} holds no config.json and no .gguf file; pass a folder saved with save_pretrained",
        EXIT_BAD_PATH,
    )


def _require_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        return
    if torch.version.cuda is None:
        reason = f"this torch ({torch.__version__}) is a CPU-only build"
    else:
        reason = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    raise CliError(
        f"no CUDA device: {reason}; the budget is measured with real forward and backward passes on "
        f"the GPU that will train, so run calibrate there",
        EXIT_NO_DEVICE,
    )


def _to_device(model: Any) -> Any:
    return model.to("cuda")


def _load_model(model_dir: str, source: Dict[str, Any], dtype: str) -> Any:
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as error:
        raise CliError(
            f"calibrate loads the model with transformers, which is not installed ({error}); "
            f"pip install 'warppack[hf]'",
            EXIT_MISSING_DEPENDENCY,
        ) from None
    from warppack.progress import progress_enabled

    if not progress_enabled():  # transformers draws its loading bars even into a pipe
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    kwargs: Dict[str, Any] = dict(source)
    kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="warppack", **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise CliError(
            f"cannot load a causal LM from {model_dir}: {' '.join(str(error).split())}", EXIT_BAD_PATH
        ) from None


def run(args: argparse.Namespace) -> int:
    check_count(args.max_seq_len, flag="--max-seq-len", example=4096)
    check_fraction(args.headroom, flag="--headroom", closed_above=False)
    check_count(args.pad_to_multiple_of, flag="--pad-to-multiple-of", example=64)
    check_count(args.max_sequences, flag="--max-sequences", example=64)
    if args.max_sequences is not None and not args.static_shape:
        raise CliError(f"--max-sequences {args.max_sequences} goes with --static-shape; pass both", EXIT_USAGE)
    source = _model_source(args.model_dir, args.gguf_file)
    _require_cuda()
    import torch

    from warppack.batch.collator import PackedCollator
    from warppack.memory.calibrate import calibrate_token_budget as calibrate

    model = _load_model(args.model_dir, source, args.dtype)
    max_seq_len = args.max_seq_len
    if max_seq_len is None:
        max_seq_len = getattr(model.config, "max_position_embeddings", None)
        if not max_seq_len:
            raise CliError("the model's config has no max_position_embeddings; pass --max-seq-len", EXIT_USAGE)
    if args.gradient_checkpointing:  # transformers renamed it; the old name warns where the new one exists
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    model = _to_device(model)
    optimizer_class = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.SGD
    optimizer = optimizer_class(model.parameters(), lr=1e-5)
    accelerator = None
    if args.mixed_precision != "no":
        try:
            from accelerate import Accelerator
        except ImportError:
            raise CliError(
                "--mixed-precision needs accelerate, which is not installed; pip install 'warppack[hf]'",
                EXIT_MISSING_DEPENDENCY,
            ) from None
        accelerator = Accelerator(mixed_precision=args.mixed_precision)
        model, optimizer = accelerator.prepare(model, optimizer)

    wanted: Dict[str, Any] = {"max_seq_len": int(max_seq_len), "optimizer": optimizer, "accelerator": accelerator}
    collator = None
    if args.static_shape:  # the layout the probes copy; its max_tokens is a placeholder the calibrator ignores
        multiple = args.pad_to_multiple_of or 1
        collator = PackedCollator(multiple, pad_to_multiple_of=args.pad_to_multiple_of, static_shape=True,
                                           max_sequences=args.max_sequences)
    elif args.pad_to_multiple_of is not None:
        collator = PackedCollator(pad_to_multiple_of=args.pad_to_multiple_of)
    optional = {
        "headroom": args.headroom,
        "collator": collator,
        "cache": False if args.no_cache else None,
        "cache_dir": args.cache_dir,
    }
    flags = {"cache": "--no-cache", "collator": "--static-shape" if args.static_shape else "--pad-to-multiple-of"}
    parameters = inspect.signature(calibrate).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for name, value in optional.items():
        if value is None:
            continue
        if name not in parameters and not takes_any:
            flag = flags.get(name, "--" + name.replace("_", "-"))
            raise CliError(f"{flag} is not supported by this calibrator (it takes {list(parameters)})", EXIT_USAGE)
        wanted[name] = value
    budget = int(calibrate(model, **wanted))

    device = torch.cuda.get_device_name(torch.cuda.current_device())
    if args.json:
        print(json.dumps({"max_tokens": budget, "model": args.model_dir, "max_seq_len": int(max_seq_len), "device": device}))
    else:
        print(f"token budget: {budget:,} tokens per batch ({args.model_dir}, max_seq_len {max_seq_len:,}, {device})")
        layout = "" if not args.static_shape else ", static_shape=True" + (
            f", max_sequences={args.max_sequences}" if args.max_sequences else "")
        print(
            f"use it as max_tokens: PackedBatchSampler(lengths, max_tokens={budget}) and "
            f"PackedCollator(max_tokens={budget}{layout})"
        )
    return 0
