"""What a steering push costs, measured on neutral prompts.

- :func:`next_token_kl`: the measure abliteration tools minimise. For each neutral prompt, the
  mean over its positions of ``KL(P_unsteered || P_steered)`` (nats), the unsteered forward
  computed once per batch and reused for every alpha. At ``alpha = 0`` the steered forward is
  the unsteered one, so the KL is exactly 0. ``kl="first-token"`` reads only the last prompt
  position, the distribution of the reply's first token: heretic's figure (the mean over
  prompts of KL(P_unsteered || P_steered) there).
- :func:`reply_perplexity`: how surprising the steered model's reply is to the *unsteered*
  model (derailed text is improbable text);
- :func:`distinct_n`: the share of a reply's token n-grams that are distinct (repetition loops
  score low), so derailment shows without reading the replies.
The prompts are open-ended questions written for this project (:data:`NEUTRAL_PROMPTS`), or the
user's own.

Shapes: logits ``[B, T, vocab]``; each result is ``[n_prompts]`` (per alpha for the KL).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.model.generation import keep_last_logits
from traitlens.pipeline.model.hooks import left_padded, pad_batch, pad_token_id
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.steer.steering import Push, pushes
from traitlens.store.vocabulary import KL_MEASURES

NEUTRAL_PROMPTS = (
    "What is a good way to spend a quiet afternoon?",
    "Describe the town you would most like to live in.",
    "How do you make a cup of tea?",
    "What should someone know before adopting a dog?",
    "Tell me about the changing of the seasons.",
    "What makes a meal memorable?",
    "How would you plan a weekend trip to the coast?",
    "Explain how a bicycle works.",
    "What do you think about when you look at the night sky?",
    "Describe your ideal morning routine.",
    "How do plants know which way is up?",
    "What is the best way to learn a new language?",
    "Write a few sentences about a walk in the rain.",
    "What would you put in a time capsule?",
    "How do people decide what to name a child?",
    "What is interesting about the history of maps?",
    "Describe a busy market on a Saturday morning.",
    "How should a beginner start running?",
    "What are some ways to keep a small garden?",
    "Tell me about a river from its source to the sea.",
    "What makes a good neighbour?",
    "How does a library decide which books to keep?",
    "Describe the sound of a city at night.",
    "What is a good first recipe to learn?",
    "How do birds find their way when they migrate?",
    "What would a perfect picnic look like?",
    "Explain why the sky changes colour at sunset.",
    "How do you choose a good book to read?",
    "Describe an old house you find interesting.",
    "What are the pleasures of a long train journey?",
    "How is bread made, from flour to loaf?",
    "What do you like about winter?",
)


def next_token_kl(lm: LoadedModel, vector, layer: int, alphas: list[float], scale: float,
                  prompts: list[str] = NEUTRAL_PROMPTS, chat: bool = True, batch_size: int = 8) -> dict[float, np.ndarray]:
    """Per prompt, the mean over its real positions of KL(unsteered || steered) in nats, for each
    alpha (``{alpha: [n_prompts]}``); the push is ``alpha * scale * v`` at block ``layer``."""
    settings = {float(a): [Push(vector, layer, float(a), scale)] for a in alphas}
    return next_token_kl_under(lm, settings, prompts, chat, batch_size)


@torch.inference_mode()
def next_token_kl_under(lm: LoadedModel, settings: dict, prompts: list[str] = NEUTRAL_PROMPTS, chat: bool = True,
                        batch_size: int = 8, kl: str = "all-positions", base: dict | None = None) -> dict:
    """:func:`next_token_kl` of any intervention: ``settings`` maps a key to the :class:`.Push` es
    applied together, or to a function returning a fresh context manager that steers ``lm``
    (an ablation); returns ``{key: [n_prompts]}``, the unsteered forward run once per batch.
    ``kl``: one of :data:`~traitlens.store.vocabulary.KL_MEASURES` (every position, or the
    last prompt position: the reply's first token). ``base``: a dict the caller keeps across
    calls on the same ``prompts`` and ``batch_size``; the unsteered log-probabilities are kept
    there (``[B, T, vocab]`` float32 per batch: 32 prompts of a 49k vocabulary hold ~250 MB) and
    run once for every call, not once per call."""
    if kl not in KL_MEASURES:
        raise ValueError(f"kl must be one of {', '.join(KL_MEASURES)}")
    seqs = [render_ids(lm.tokenizer, p, None, chat) for p in prompts]
    out = {k: np.zeros(len(seqs)) for k in settings}
    for b in range(0, len(seqs), batch_size):
        ids, mask, pos = left_padded(lm, seqs[b:b + batch_size])
        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        if base is None or (b, batch_size) not in base:
            logp = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
            if base is not None:
                base[(b, batch_size)] = logp
        else:
            logp = base[(b, batch_size)]
        m = mask.float()
        if kl == "first-token":  # left-padded: every prompt's last token is the last column
            m = torch.zeros_like(m)
            m[:, -1] = 1.0
        for k, how in settings.items():  # (alpha 0 adds exactly nothing: the same forward, KL exactly 0)
            with (how() if callable(how) else pushes(lm, how)):
                steered = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
            out[k][b:b + len(ids)] = _mean_kl(logp, steered, m)
    return out


def _mean_kl(logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per row, the mean over its real positions of KL(P || Q), from log-probabilities
    ``[B, T, vocab]`` and a float ``mask`` ``[B, T]``: ``[B]``."""
    kl = (logp.exp() * (logp - logq.to(logp.device))).sum(-1).clamp_min(0.0)  # [B, T]; tiny negatives are rounding
    mask = mask.to(kl.device)
    return ((kl * mask).sum(1) / mask.sum(1)).cpu().numpy()


@torch.inference_mode()
def next_token_kl_between(lm: LoadedModel, reference, others: list[LoadedModel], prompts: list[str] = NEUTRAL_PROMPTS,
                          chat: bool = True, batch_size: int = 8) -> list[np.ndarray]:
    """Per prompt, the mean over its real positions of KL(P_reference || P_other) in nats, for
    each of ``others`` (models with the same tokenizer: exported copies, run on the very same
    token ids): ``[n_prompts]`` each. ``reference`` is a function returning a fresh context
    manager (the hooks that steer ``lm``), run once per batch."""
    seqs = [render_ids(lm.tokenizer, p, None, chat) for p in prompts]
    out = [np.zeros(len(seqs)) for _ in others]
    for b in range(0, len(seqs), batch_size):
        ids, mask, pos = left_padded(lm, seqs[b:b + batch_size])
        kw = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        with reference():
            ref = torch.log_softmax(lm.model(**kw).logits.float(), dim=-1)
        for k, other in enumerate(others):
            theirs = torch.log_softmax(other.model(**{n: v.to(other.device) for n, v in kw.items()}).logits.float(),
                                       dim=-1)
            out[k][b:b + len(ids)] = _mean_kl(ref, theirs, mask.float())
    return out


@torch.inference_mode()
def reply_perplexity(lm: LoadedModel, prompts: list[str], replies: list[list[int]], chat: bool = True,
                     batch_size: int = 8) -> np.ndarray:
    """Perplexity of each reply (token ids) given its prompt under ``lm`` as it is now (call it
    unsteered): ``exp`` of the reply tokens' mean negative log-likelihood, ``[n]``; NaN for an
    empty reply."""
    heads = [render_ids(lm.tokenizer, p, None, chat) for p in prompts]
    out = np.full(len(prompts), math.nan)
    for b in range(0, len(prompts), batch_size):
        idx = [i for i in range(b, min(b + batch_size, len(prompts))) if replies[i]]
        if not idx:
            continue
        ids, mask = pad_batch([heads[i] + list(replies[i]) for i in idx], pad_token_id(lm.tokenizer), "right", lm.device)
        # the LM head only where a reply token is predicted: from the shortest prompt's last token on
        keep = keep_last_logits(lm, ids.shape[1] - min(len(heads[i]) for i in idx) + 1)
        logits = lm.model(input_ids=ids, attention_mask=mask.long(), **keep).logits.float()
        lp, first = torch.log_softmax(logits, dim=-1), ids.shape[1] - logits.shape[1]  # lp's column 0 is position first
        for j, i in enumerate(idx):
            start, end = len(heads[i]), len(heads[i]) + len(replies[i])
            tok = ids[j, start:end]
            nll = -lp[j, start - 1 - first:end - 1 - first].gather(-1, tok.unsqueeze(-1)).squeeze(-1)  # t predicts t+1
            out[i] = float(torch.exp(nll.mean()))
    return out


def distinct_n(tokens, n: int = 2) -> float:
    """Distinct n-grams over all n-grams of one token sequence (1.0: no n-gram repeats); NaN
    when it has fewer than ``n`` tokens."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan
