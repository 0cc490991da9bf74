"""Train and evaluate with the Hugging Face Trainer on packed batches: one line added.

    python examples/train_hf_trainer.py --tiny           # CPU, a few seconds (what CI runs)
    python examples/train_hf_trainer.py                  # a small Llama-config LM, GPU when there is one
    python examples/train_hf_trainer.py --model DIR      # fine-tune a saved causal LM with its tokenizer

The warppack line is marked below: ``pack_trainer`` gives the Trainer a ``PackedCollator``,
token-budget batches (an exact ``len(train_dataloader)``, so ``max_steps``, schedules and epochs
are right) and ``attn_implementation="warppack"``, and logs what it changed. ``--max-tokens`` goes
in as a ``warppack.PackingConfig``; without it the budget is calibrated on the GPU, and on a CPU it
stands in for the padded batches you would otherwise train on (per_device_train_batch_size x the
99% quantile of the lengths).

The data is the Python standard library's own source, one example per top-level definition, as
bytes (vocabulary 256) unless --model brings a tokenizer: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import re
import sysconfig
import tempfile
from pathlib import Path

import torch

import warppack


def stdlib_rows(max_files: int, max_len: int, tokenizer=None) -> list:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py"))[:max_files]:
        source = path.read_text(encoding="utf-8", errors="replace")
        texts += [t for t in re.split(r"\n(?=def |class )", source) if t.strip()]
    rows = [list(t.encode("utf-8")) for t in texts] if tokenizer is None else tokenizer(texts)["input_ids"]
    return [r[:max_len] for r in rows if len(r) >= 2]


def main(argv=None) -> int:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps on the CPU")
    parser.add_argument("--model", default=None, help="folder of a saved causal LM (and its tokenizer)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per batch (default: calibrated)")
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--output-dir", default=None, help="checkpoints and logs (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.max_len = args.max_len or (256 if args.tiny else 1024)
    args.max_tokens = args.max_tokens or (1024 if args.tiny else None)
    args.max_steps = args.max_steps or (4 if args.tiny else -1)

    tokenizer = AutoTokenizer.from_pretrained(args.model) if args.model else None
    rows = stdlib_rows(8 if args.tiny else 200, args.max_len, tokenizer)
    split = len(rows) // 10 or 1
    train = Dataset.from_dict({"input_ids": rows[split:]})  # lengths come from its Arrow offsets
    evaluation = Dataset.from_dict({"input_ids": rows[:split]})

    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="warppack")
    else:
        size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if args.tiny else dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, max_position_embeddings=args.max_len,
                                             num_key_value_heads=2, attn_implementation="warppack", **size))

    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=args.output_dir or scratch,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            learning_rate=3e-4,
            per_device_train_batch_size=8,  # without --max-tokens on a CPU, the budget is 8 x a long length
            logging_steps=1 if args.tiny else 10,
            save_strategy="no" if args.tiny else "epoch",
            report_to="none",
            use_cpu=args.tiny,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                          processing_class=tokenizer)
        warppack.pack_trainer(trainer, packing=warppack.PackingConfig(max_tokens=args.max_tokens))  # warppack

        print(f"{len(train):,} training examples in {len(trainer.get_train_dataloader())} packed batches per epoch")
        result = trainer.train()
        metrics = trainer.evaluate()  # every eval example exactly once, packed
        logged = [entry for entry in trainer.state.log_history if "packing_efficiency" in entry]
        if logged:
            last = logged[-1]
            print(f"packing: efficiency {last['packing_efficiency']:.1%}, {last['sequences_per_batch']:.1f} sequences "
                  f"per batch, budget {last.get('token_budget')}")
    if not math.isfinite(result.training_loss) or not math.isfinite(metrics["eval_loss"]):
        raise SystemExit(f"training diverged: {result.training_loss}, {metrics['eval_loss']}")
    print(f"done: {result.global_step} steps, train loss {result.training_loss:.3f}, eval loss {metrics['eval_loss']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
