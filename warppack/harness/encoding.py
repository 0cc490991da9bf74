"""lm-eval's request tokenisation, batched: the token ids of ``HFLM``, in a few fast-tokenizer calls.

lm-eval encodes each ``loglikelihood`` request on its own, twice (context + continuation, then the
context), and each rolling document on its own; for short multiple-choice requests that costs about as
much as scoring them packed. Here every distinct string is encoded once, all in one batched call per
``add_special_tokens`` value, with ``HFLM.tok_encode``'s rules (``add_bos_token``; no special tokens
for a string that already starts with the prefix token's text) and ``TemplateLM.loglikelihood``'s
(trailing context whitespace moved to the continuation; an empty context is the prefix token).

A fast tokenizer encodes one string as a batch of one, so the ids are the same; a tokenizer that
overrides the encoding entry points might not, and ``batches_exactly`` tells which is which.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["batches_exactly", "encode_pairs", "encode_texts"]

#: (text, add_special_tokens): one encoding of one string.
Key = Tuple[str, bool]

# transformers' own modules, where ``encode(text)`` is ``__call__([text])`` for fast tokenizers.
_BASE_MODULES = frozenset({"transformers.tokenization_utils_base", "transformers.tokenization_utils_tokenizers",
                           "transformers.tokenization_utils_fast"})
_ENTRY_POINTS = ("encode", "__call__", "encode_plus", "_encode_plus", "_batch_encode_plus")


def batches_exactly(tokenizer: Any) -> bool:
    """Whether a batched call of ``tokenizer`` gives each string the ids of ``tokenizer.encode`` alone.

    True for transformers' fast tokenizers as they ship; a slow tokenizer, or a class that overrides an
    encoding entry point (CodeLlama's splits a single string at its fill token), is left to lm-eval.
    """
    if not getattr(tokenizer, "is_fast", False):
        return False
    methods = (getattr(type(tokenizer), name, None) for name in _ENTRY_POINTS)
    return all(method is None or method.__module__ in _BASE_MODULES for method in methods)


class _Encoder:
    """``HFLM.tok_encode`` of many strings: each distinct one encoded once, in batched calls."""

    def __init__(self, tokenizer: Any, *, add_bos_token: Optional[bool], prefix_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.add = True if add_bos_token is None else bool(add_bos_token)  # None: encode()'s default, True
        self.prefix_text = tokenizer.decode(prefix_token_id)

    def key(self, text: str) -> Key:
        """How ``HFLM.tok_encode(text)`` encodes ``text``: no special tokens if it starts with the prefix's text."""
        return text, False if text.startswith(self.prefix_text) else self.add

    def encode(self, keys: Iterable[Key]) -> Dict[Key, List[int]]:
        wanted = dict.fromkeys(keys)
        ids: Dict[Key, List[int]] = {}
        for add in (False, True):
            texts = [text for text, flag in wanted if flag is add]
            if texts:
                encoded = self.tokenizer(texts, add_special_tokens=add)["input_ids"]
                ids.update(zip(((text, add) for text in texts), encoded))
        return ids


def encode_texts(tokenizer: Any, texts: Sequence[str], *, add_bos_token: Optional[bool],
                 prefix_token_id: int) -> List[List[int]]:
    """``HFLM.tok_encode(text)`` of each text (as ``loglikelihood_rolling`` encodes its documents)."""
    encoder = _Encoder(tokenizer, add_bos_token=add_bos_token, prefix_token_id=prefix_token_id)
    keys = [encoder.key(text) for text in texts]
    ids = encoder.encode(keys)
    return [ids[key] for key in keys]


def encode_pairs(tokenizer: Any, pairs: Sequence[Tuple[str, str]], *, add_bos_token: Optional[bool],
                 prefix_token_id: int) -> List[Tuple[List[int], List[int]]]:
    """``(context ids, continuation ids)`` of each ``(context, continuation)``, as a causal ``HFLM``'s
    ``loglikelihood`` encodes them."""
    encoder = _Encoder(tokenizer, add_bos_token=add_bos_token, prefix_token_id=prefix_token_id)
    # (whole, context) keys; an empty context's continuation is encoded alone, without special tokens.
    # Trailing context whitespace goes to the continuation, so that it joins the first word's token.
    plans: List[Tuple[Key, Optional[Key]]] = [
        ((continuation, False), None) if context == "" else
        (encoder.key(context + continuation), encoder.key(context.rstrip()))
        for context, continuation in pairs]
    ids = encoder.encode(key for plan in plans for key in plan if key is not None)
    encoded = []
    for index, ((_, continuation), (whole, head)) in enumerate(zip(pairs, plans)):
        tokens = ids[whole]
        if head is not None:
            encoded.append((ids[head], tokens[len(ids[head]):]))
        elif not tokens:
            raise ValueError(f"loglikelihood request {index}: context '' and continuation {continuation!r}, which "
                             "encodes to no tokens; give a non-empty continuation")
        else:  # the prefix token is the context, unless the continuation already starts with it
            encoded.append(([prefix_token_id], tokens) if tokens[0] != prefix_token_id else (tokens[:1], tokens[1:]))
    return encoded
