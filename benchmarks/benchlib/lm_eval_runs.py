"""One timed lm-eval run of one task, and the per-request comparison of two runs.

A run is ``lm_eval.simple_evaluate`` on an already-built LM (model loading and ``max_tokens=auto``
calibration are timed apart, once per backend setting). Two times are kept: the *wall* time of the
whole ``simple_evaluate`` call (lm-eval's request building and metrics included) and the *request*
time spent inside the LM's request method (tokenisation, batching, forwards, scoring; the device is
synchronised at both ends), which is where the backends differ; the part of it spent in HFLM's
tokenizer calls (the same code in both backends) is reported too.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

__all__ = ["REQUEST_TYPES", "RequestTimer", "build_lm", "checks", "compare", "quiet", "release", "run_task",
           "task_folder_manager"]

REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")
TOKENIZE = ("tok_encode", "tok_batch_encode")  # HFLM's tokenizer calls (lm-eval calls them inside requests)


def quiet() -> None:
    """No progress bars, no lm-eval warnings, and no environment report per ``simple_evaluate``.

    lm-eval's report runs torch's ``collect_env`` (a dozen subprocesses, ~2 s) on every call; a user's
    single ``lm_eval run`` pays it once, this benchmark calls once per task and setting.
    """
    import lm_eval.evaluator
    import tqdm.std
    import transformers

    init = tqdm.std.tqdm.__init__

    def silent(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True  # lm-eval passes disable= itself, so TQDM_DISABLE is not enough
        init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = silent  # type: ignore[method-assign]
    lm_eval.evaluator.add_env_info = lambda results: None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


class RequestTimer:
    """Wraps an LM's request methods and its tokenizer calls; ``take()`` returns (and clears) the
    seconds in requests, the seconds of those in tokenisation, and the request count."""

    def __init__(self, lm: Any, device: torch.device) -> None:
        self.device = device
        self.seconds = self.tokenize = 0.0
        self.requests = 0
        for name in REQUEST_TYPES:
            setattr(lm, name, self._timed(getattr(lm, name)))
        for name in TOKENIZE:
            setattr(lm, name, self._tokenizing(getattr(lm, name)))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, method: Callable[..., List[Any]]) -> Callable[..., List[Any]]:
        def timed(requests: List[Any], *args: Any, **kwargs: Any) -> List[Any]:
            self._sync()
            start = time.perf_counter()
            answers = method(requests, *args, **kwargs)
            self._sync()
            self.seconds += time.perf_counter() - start
            self.requests += len(requests)
            return answers

        return timed

    def _tokenizing(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def tokenizing(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.tokenize += time.perf_counter() - start

        return tokenizing

    def take(self) -> Dict[str, float]:
        taken = {"seconds": self.seconds, "tokenize": self.tokenize, "requests": self.requests}
        self.seconds = self.tokenize = 0.0
        self.requests = 0
        return taken


def build_lm(name: str, model_args: str, extra: Dict[str, Any], device: torch.device) -> Tuple[Any, float]:
    """The LM as lm-eval's command line builds it: ``--model name --model_args ... --device ...``."""
    from lm_eval.api.registry import get_model

    start = time.perf_counter()
    max_tokens = extra.get("max_tokens")
    arg_string = model_args + (f",max_tokens={max_tokens}" if max_tokens is not None else "")
    lm = get_model(name).create_from_arg_string(arg_string, {"batch_size": extra["batch_size"], "device": str(device)})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return lm, time.perf_counter() - start


def release(device: torch.device) -> None:
    """Collect garbage and hand cached device memory back (between backend settings)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _responses(samples: List[dict]) -> Dict[int, List[Any]]:
    """doc_id -> [(logprob, is_greedy) | rolling logprob | generated text] in lm-eval's request order."""
    found = {}
    for row in samples:
        found[int(row["doc_id"])] = [tuple(r[0]) if isinstance(r[0], (list, tuple)) else r[0] for r in row["resps"]]
    return found


def run_task(lm: Any, timer: RequestTimer, task: str, manager: Any, *, limit: Optional[int] = None) -> Dict[str, Any]:
    """``simple_evaluate`` of ``lm`` on ``task``: times, requests/s, metrics and (in memory) the responses."""
    import lm_eval

    timer.take()
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True,
                                  bootstrap_iters=0, limit=limit, verbosity="ERROR")
    wall = time.perf_counter() - start
    spent = timer.take()
    metrics = {name.split(",")[0]: value for name, value in out["results"][task].items()
               if isinstance(value, (int, float)) and not name.startswith("alias")}
    seconds = spent["seconds"]
    return {"wall_s": round(wall, 3), "request_s": round(seconds, 3), "tokenize_s": round(spent["tokenize"], 3),
            "requests": int(spent["requests"]),
            "requests_per_s": round(spent["requests"] / seconds, 1) if seconds > 0 else None,
            "metrics": metrics, "responses": _responses(out["samples"][task])}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare(got: Dict[str, Any], want: Dict[str, Any]) -> Dict[str, Any]:
    """Per-request differences of run ``got`` from run ``want`` (same task, same documents)."""
    a, b = got["responses"], want["responses"]
    if a.keys() != b.keys():
        return {"error": f"different documents: {len(a)} vs {len(b)}"}
    pairs = [(x, y) for doc in b for x, y in zip(a[doc], b[doc])]
    out: Dict[str, Any] = {"requests": len(pairs)}
    scores = [(x, y) for x, y in pairs if isinstance(y, tuple)]
    rolling = [(float(x), float(y)) for x, y in pairs if isinstance(y, float)]
    texts = [(x, y) for x, y in pairs if isinstance(y, str)]
    if scores:
        out["max_abs_logprob_diff"] = max(abs(x[0] - y[0]) for x, y in scores)
        out["is_greedy_mismatches"] = sum(bool(x[1]) != bool(y[1]) for x, y in scores)
    if rolling:
        out["max_abs_logprob_diff"] = max(abs(x - y) for x, y in rolling)
        out["max_rel_logprob_diff"] = max(_relative(x, y) for x, y in rolling)
    if texts:
        out["generations_identical"] = sum(x == y for x, y in texts)
    metric_diffs = {name: _relative(float(got["metrics"][name]), float(value))
                    for name, value in want["metrics"].items()
                    if name in got["metrics"] and math.isfinite(float(value))}
    out["max_rel_metric_diff"] = max(metric_diffs.values(), default=0.0)
    return out


def checks(diff: Dict[str, Any], *, tolerance: float, rolling_rel: float) -> List[str]:
    """What a comparison fails of: log-likelihoods within ``tolerance`` (rolling sums also within
    ``rolling_rel`` relative), is_greedy and generations identical; empty when equal."""
    failed = []
    if "error" in diff:
        return [diff["error"]]
    if diff.get("max_abs_logprob_diff", 0.0) > tolerance and diff.get("max_rel_logprob_diff", math.inf) > rolling_rel:
        failed.append(f"log-likelihood differs by {diff['max_abs_logprob_diff']:.3g}")
    if diff.get("is_greedy_mismatches", 0):
        failed.append(f"{diff['is_greedy_mismatches']} is_greedy differ")
    if "generations_identical" in diff and diff["generations_identical"] != diff["requests"]:
        failed.append(f"{diff['requests'] - diff['generations_identical']} generations differ")
    return failed


def task_folder_manager(folder: Path) -> Any:
    """lm-eval's TaskManager of the generated tasks only (indexing every built-in task takes ~10 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)
