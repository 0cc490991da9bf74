"""``--model warppack``: lm-eval's Hugging Face backend with packed log-likelihood scoring.

``WarpPackLM`` is lm-eval's ``HFLM`` (the same ``--model_args``, token ids, left truncation,
rolling windows and generation) whose ``loglikelihood`` and ``loglikelihood_rolling`` requests are
encoded in batched tokenizer calls (encoding.py) and scored packed: every distinct input row once,
rows planned under ``max_tokens`` tokens, one forward per batch, logits only at continuation
positions, answers in lm-eval's order.
``generate_until`` is HFLM's own (padded batches of ``batch_size`` through ``model.generate``).
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from lm_eval import utils as lm_eval_utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from warppack.attention.hf import register_attention
from warppack.harness.budget import evaluation_token_budget
from warppack.harness.encoding import batches_exactly, encode_pairs, encode_texts
from warppack.model.check import check_model
from warppack.model.continuations import score_continuations

__all__ = ["WarpPackLM"]

logger = logging.getLogger("warppack")

#: (cache key or None, context token ids, continuation token ids): lm-eval's tokenised request.
TokenRequest = Tuple[Optional[Tuple[str, str]], List[int], List[int]]


@register_model("warppack")
class WarpPackLM(HFLM):
    """lm-eval model ``warppack``: ``HFLM``'s arguments plus ``max_tokens`` (tokens per packed batch).

    ``pretrained`` is a name, a path or an already-loaded causal LM. A name or path is loaded with
    ``attn_implementation="warppack"``; a loaded model is switched to it. Either way
    ``warppack.check_model`` then proves that packed sequences cannot see each other.
    ``max_tokens``: an int, ``"auto"`` (measured on the GPU once, then cached), or unset (``"auto"``
    on CUDA, the model's ``max_length`` elsewhere). ``batch_size`` only sizes ``generate_until``.

    >>> import lm_eval, warppack.harness                                  # doctest: +SKIP
    >>> lm_eval.simple_evaluate(model="warppack", model_args="pretrained=HuggingFaceTB/SmolLM2-135M",
    ...                         tasks=["hellaswag"])                       # doctest: +SKIP
    """

    def __init__(self, pretrained: Any, *, max_tokens: Union[int, str, None] = None, **kwargs: Any) -> None:
        attn = kwargs.setdefault("attn_implementation", "warppack")
        if attn != "warppack":
            raise ValueError(f"attn_implementation={attn!r}: the warppack backend packs sequences into one row and "
                             "needs attn_implementation='warppack' to keep them apart; drop the argument (or use "
                             "--model hf for another attention)")
        register_attention()
        super().__init__(pretrained, **kwargs)
        model = self.model
        impl = getattr(model.config, "_attn_implementation", None)
        if impl != "warppack":
            model.set_attn_implementation("warppack")
            logger.info("warppack: attn_implementation %r -> 'warppack' (packed sequences must not see each other)",
                        impl)
        check_model(model)
        self.max_tokens = evaluation_token_budget(model, max_tokens=max_tokens, max_length=self.max_length,
                                                  device=self.device)
        logger.info("warppack: scoring packed batches of at most %d tokens", self.max_tokens)

    def _get_backend(self, *args: Any, **kwargs: Any) -> None:
        # HFLM decides causal vs seq2seq here, before it loads any weights.
        super()._get_backend(*args, **kwargs)
        if self.backend != "causal":
            raise ValueError(f"backend={self.backend!r}: the warppack backend packs decoder-only (causal) models; "
                             "evaluate encoder-decoder models with --model hf")

    def _encodes_in_batches(self) -> bool:
        """Whether encoding.py gives every request lm-eval's own token ids (else lm-eval encodes them)."""
        own = type(self).tok_encode is HFLM.tok_encode and type(self)._encode_pair is HFLM._encode_pair
        return own and batches_exactly(self.tokenizer)

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        """``(logprob, is_greedy)`` per ``(context, continuation)`` request: encoded in batches, scored packed."""
        if getattr(self, "enable_thinking", False) or not self._encodes_in_batches():
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)  # HFLM refuses enable_thinking
        pairs = [tuple(request.args) for request in requests]
        encoded = encode_pairs(self.tokenizer, pairs, add_bos_token=self.add_bos_token,
                               prefix_token_id=self.prefix_token_id)
        tokens = [(pair, context, continuation) for pair, (context, continuation) in zip(pairs, encoded)]
        return self._loglikelihood_tokens(tokens, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests: Sequence[TokenRequest], disable_tqdm: bool = False,
                              override_bs: Optional[int] = None) -> List[Tuple[float, bool]]:
        """``(logprob, is_greedy)`` per tokenised request, packed (``override_bs`` is ignored)."""
        limit = self.max_length
        inputs, continuations = [], []
        for index, (_, context, continuation) in enumerate(requests):
            if not context or not continuation or len(continuation) > limit:
                raise ValueError(f"loglikelihood request {index} has {len(context)} context and {len(continuation)} "
                                 f"continuation tokens; lm-eval scores 1..max_length={limit} continuation tokens "
                                 "after a non-empty context (raise max_length= in --model_args for longer ones)")
            inputs.append((context + continuation)[-(limit + 1):][:-1])  # left-truncated as HFLM does
            continuations.append(continuation)
        cut = sum(len(context) + len(continuation) > limit + 1 for _, context, continuation in requests)
        if cut:
            logger.warning("warppack: %d requests are longer than max_length=%d tokens and were cut from the left",
                           cut, limit)
        autocast = getattr(self, "mixed_precision_dtype", None)  # HFLM options of recent 0.4.x releases
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests (packed)") as bar, \
                torch.autocast(device_type=self.device.type, dtype=autocast, enabled=autocast is not None):
            answers = score_continuations(self.model, inputs, continuations, max_tokens=self.max_tokens,
                                          device=self.device, softmax_dtype=getattr(self, "softmax_dtype", None),
                                          progress=bar.update)
        for (key, _, _), answer in zip(requests, answers):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> List[float]:
        """Summed log-likelihood of each document over lm-eval's rolling windows, all windows packed together."""
        texts = [text for (text,) in (request.args for request in requests)]
        if self._encodes_in_batches():
            documents = encode_texts(self.tokenizer, texts, add_bos_token=self.add_bos_token,
                                     prefix_token_id=self.prefix_token_id)
        else:
            documents = [self.tok_encode(text) for text in texts]
        windows: List[TokenRequest] = []
        owners: List[int] = []
        for index, document in enumerate(documents):
            pairs = lm_eval_utils.get_rolling_token_windows(token_list=document,
                                                            prefix_token=self.prefix_token_id,
                                                            max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(lm_eval_utils.make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = np.zeros(len(requests), dtype=np.float64)
        np.add.at(totals, np.asarray(owners, dtype=np.int64), [logprob for logprob, _ in scores])
        for request, total in zip(requests, totals.tolist()):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals.tolist()
