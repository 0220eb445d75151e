"""Greedy continuations of a batch of prompts, each cut after its first end-of-sequence token;
and greedy replies to plain-text prompts (what steering evaluations generate and read)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from traitlens.pipeline.model.encode import Messages, render_ids
from traitlens.pipeline.model.hooks import pad_batch, pad_token_id
from traitlens.pipeline.model.loading import LoadedModel

if TYPE_CHECKING:
    from transformers import GenerationMixin


def keep_last_logits(lm: LoadedModel, k: int = 1) -> dict[str, int]:
    """Forward keywords with ``logits_to_keep=k`` where the model takes it: the LM head then runs
    on the last ``k`` positions only (the vocabulary projection of every position is most of a
    short prompt's forward), ``logits`` ``[batch, k, vocab]``; ``{}`` (every position) where it
    does not."""
    import inspect

    return {"logits_to_keep": k} if "logits_to_keep" in inspect.signature(lm.model.forward).parameters else {}


def eos_token_ids(lm: LoadedModel) -> set[int]:
    """Every id that ends a reply: the generation config's (one or a list) and the tokenizer's."""
    ids = set()
    gen = getattr(lm.model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), lm.tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


@torch.inference_mode()
def greedy_batch(lm: LoadedModel, seqs: list[list[int]], max_new_tokens: int,
                 eos_ids: set[int] | None = None) -> list[list[int]]:
    """New token ids of each prompt's greedy continuation (left-padded as one batch), each up to
    and including its first EOS, at most ``max_new_tokens``."""
    eos_ids = eos_token_ids(lm) if eos_ids is None else eos_ids
    pad_id = pad_token_id(lm.tokenizer)
    ids, mask = pad_batch(seqs, pad_id, "left", lm.device)
    out = cast("GenerationMixin", lm.model).generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=pad_id)
    replies = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))
        replies.append(row[:cut])
    return replies


def greedy_replies(lm: LoadedModel, prompts: list[str | Messages], max_new_tokens: int, chat: bool = True,
                   batch_size: int = 8) -> list[list[int]]:
    """Each prompt's greedy reply (the prompt rendered in the chat template when ``chat``), as
    token ids without its end-of-sequence token, at most ``max_new_tokens``; batched, left-padded.
    A prompt is a text or a conversation (``[{role, content}, ...]``, a system turn included); one
    longer than the context leaves ``max_new_tokens`` free by keeping its last tokens."""
    room = max(1, lm.max_length - max_new_tokens)
    seqs = [render_ids(lm.tokenizer, p if isinstance(p, str) else None, None if isinstance(p, str) else p, chat)[-room:]
            for p in prompts]
    eos, out = eos_token_ids(lm), []
    for b in range(0, len(seqs), batch_size):
        out += [[t for t in r if t not in eos] for r in greedy_batch(lm, seqs[b:b + batch_size], max_new_tokens, eos)]
    return out
