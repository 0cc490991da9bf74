"""Local lm-eval tasks of the GPU lm-eval benchmark, generated deterministically into a folder.

Four task kinds over seeded English-word text (the same documents on every machine, nothing
downloaded): multiple choice with benchmark-like lengths (hellaswag-like contexts, four multi-word
endings), multiple choice with SFT-like lengths (long-tailed lognormal contexts, short answers),
rolling perplexity over long documents, and greedy generation. Each is an lm-eval task YAML over
a JSON file, loaded by a ``custom_dataset`` function, as the backend's CPU tests do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

__all__ = ["TASKS", "TaskSpec", "request_lengths", "task_texts", "write_tasks"]

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can said other into than its "
    "time only could new them man some these then two first may any like now my such make over our even most me "
    "state after also made many did must before back see through way where get much go well your know should down "
    "work year because come people just say each those take day good how long very still own find here both give "
    "life under never while last might great old off house world part small again place thing around same water "
    "hand high every large number between city name river light school always night found point often change open "
    "began family story early country thought second left mother along land answer study learn plant cover food sun "
    "four state keep eye door question grow list road town stone music paper morning market bridge garden winter "
    "summer north south field horse table window letter village valley forest island machine engine signal reason"
).split()
_ZIPF = 1.0 / np.arange(1, len(_WORDS) + 1) ** 0.9
_ZIPF /= _ZIPF.sum()

_UTILS = '''"""Loads the JSON documents next to these task YAMLs as the test split (no hub access)."""
import json
from pathlib import Path

import datasets


def load(file, **_):
    documents = json.loads((Path(__file__).resolve().parent / file).read_text())
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(documents)})
'''

_YAML = {
    "multiple_choice": """doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
""",
    "loglikelihood_rolling": """doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - {{metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
  - {{metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
  - {{metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}}
""",
    "generate_until": """doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
""",
}


def _text(rng: np.random.Generator, words: int) -> str:
    """``words`` Zipf-distributed English words in sentences of 6 to 20 words."""
    picked = [_WORDS[i] for i in rng.choice(len(_WORDS), size=max(1, int(words)), p=_ZIPF)]
    out, start = [], 0
    while start < len(picked):
        end = start + int(rng.integers(6, 21))
        sentence = " ".join(picked[start:end])
        out.append(sentence[0].upper() + sentence[1:] + ".")
        start = end
    return " ".join(out)


def _lognormal(rng: np.random.Generator, n: int, median: float, sigma: float, low: int, high: int) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), sigma, n), low, high).astype(np.int64)


def _choices(rng: np.random.Generator, n: int, *, median: float, sigma: float, low: int, high: int,
             answer_words: tuple) -> List[dict]:
    """``n`` questions of lognormal word counts, each with four answers of ``answer_words`` (low, high) words."""
    contexts = _lognormal(rng, n, median, sigma, low, high)
    return [{"question": _text(rng, c),
             "choices": [_text(rng, w).rstrip(".") for w in rng.integers(answer_words[0], answer_words[1] + 1, 4)],
             "answer": int(rng.integers(0, 4))} for c in contexts]


@dataclass(frozen=True)
class TaskSpec:
    """One generated task: lm-eval output type, documents at scale 1, and how a document is drawn."""

    name: str
    kind: str
    docs: int
    about: str
    make: Callable[[np.random.Generator, int, int], List[dict]]  # (rng, documents, max_words) -> documents


def _bench(rng: np.random.Generator, n: int, max_words: int) -> List[dict]:
    return _choices(rng, n, median=60, sigma=0.6, low=8, high=min(400, max_words), answer_words=(8, 30))


def _sft(rng: np.random.Generator, n: int, max_words: int) -> List[dict]:
    return _choices(rng, n, median=250, sigma=1.0, low=5, high=max_words, answer_words=(1, 8))


def _documents(rng: np.random.Generator, n: int, max_words: int) -> List[dict]:
    return [{"text": _text(rng, w)} for w in _lognormal(rng, n, 2500, 0.8, 200, 8 * max_words)]


def _questions(rng: np.random.Generator, n: int, max_words: int) -> List[dict]:
    return [{"question": _text(rng, w).rstrip("."), "answer": _text(rng, 3).rstrip(".")}
            for w in _lognormal(rng, n, 25, 0.6, 4, min(120, max_words))]


TASKS = {spec.name: spec for spec in (
    TaskSpec("wpb_choice_bench", "multiple_choice", 2000, "benchmark-like multiple choice (hellaswag-like: "
             "contexts of median 60 words, four endings of 8-30 words)", _bench),
    TaskSpec("wpb_choice_sft", "multiple_choice", 1000, "SFT-like multiple choice (lognormal contexts of median "
             "250 words, long tail to the length limit, four answers of 1-8 words)", _sft),
    TaskSpec("wpb_perplexity", "loglikelihood_rolling", 300, "rolling perplexity over long documents (lognormal, "
             "median 2,500 words, in lm-eval's windows of max_length tokens)", _documents),
    TaskSpec("wpb_generate", "generate_until", 128, "greedy generation until a newline (prompts of median 25 "
             "words)", _questions),
)}


def write_tasks(folder: Path, *, scale: float = 1.0, max_words: int = 1500, max_gen_toks: int = 32,
                seed: int = 0) -> Dict[str, Dict[str, Any]]:
    """Write every task's YAML and JSON (``docs * scale`` documents) into ``folder``; name -> summary."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wpb_utils.py").write_text(_UTILS)
    summary = {}
    for index, spec in enumerate(TASKS.values()):
        docs = spec.make(np.random.default_rng([seed, index]), max(1, round(spec.docs * scale)), max_words)
        (folder / f"{spec.name}.json").write_text(json.dumps(docs))
        (folder / f"{spec.name}.yaml").write_text(
            f"task: {spec.name}\ncustom_dataset: !function wpb_utils.load\ndataset_kwargs:\n  file: {spec.name}.json\n"
            f"output_type: {spec.kind}\ntest_split: test\n" + _YAML[spec.kind].format(max_gen_toks=max_gen_toks)
            + "metadata:\n  version: 1.0\n")
        summary[spec.name] = {"kind": spec.kind, "docs": len(docs), "about": spec.about}
    return summary


def request_lengths(folder: Path, name: str, tokenize: Callable[[str], List[int]]) -> Dict[str, int]:
    """Token counts of the task's request rows as its templates render them (before truncation):
    n, median, p90, max and total."""
    docs = json.loads((folder / f"{name}.json").read_text())
    kind = TASKS[name].kind
    if kind == "multiple_choice":
        counts = [len(tokenize(f"{d['question']}\nAnswer:")) + len(tokenize(" " + c)) - 1
                  for d in docs for c in d["choices"]]
    elif kind == "loglikelihood_rolling":
        counts = [len(tokenize(d["text"])) for d in docs]
    else:
        counts = [len(tokenize(f"Q: {d['question']}\nA:")) for d in docs]
    counts.sort()
    return {"n": len(counts), "median": counts[len(counts) // 2], "p90": counts[int(0.9 * (len(counts) - 1))],
            "max": counts[-1], "total": sum(counts)}


def task_texts(folder: Path) -> List[str]:
    """Every string of every generated document (what the smoke mode's tokenizer is trained on)."""
    texts: List[str] = []
    for name in TASKS:
        for doc in json.loads((folder / f"{name}.json").read_text()):
            for value in doc.values():
                texts += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return texts
